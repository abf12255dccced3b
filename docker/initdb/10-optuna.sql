-- docker/initdb/10-optuna.sql: run once by the postgres service when its volume is new (mounted at
-- /docker-entrypoint-initdb.d; POSTGRES_DB, "mlflow", is created by the image). MLflow and Optuna both keep
-- an alembic_version table, so each gets its own database: mlflow for the tracking server, optuna for
-- the studies (hydra.sweeper.storage=postgresql+psycopg:///optuna).
CREATE DATABASE optuna;
