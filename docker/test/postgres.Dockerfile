# docker/test/postgres.Dockerfile: a stand-in for the official postgres image, for docker/test_stack.sh on
# machines without Docker Hub: Debian's postgresql on the local base image, with an entrypoint that keeps
# the official image's contract (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA, PGPORT,
# /docker-entrypoint-initdb.d/*.sql, `postgres -c ...` as the command). Users get postgres:16 instead.
#   DOCKER_BUILDKIT=1 docker build --network host --build-arg BASE_IMAGE=imgexp-test/base:bookworm \
#       -f docker/test/postgres.Dockerfile -t imgexp-test/postgres:15 docker/test
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# No default cluster: the entrypoint initializes $PGDATA on first start, as the official image does.
RUN set -eu; \
    mkdir -p /etc/postgresql-common; \
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    mkdir -p /var/lib/postgresql/data /var/run/postgresql /docker-entrypoint-initdb.d; \
    chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql; \
    chmod 700 /var/lib/postgresql/data

COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
ENTRYPOINT ["sh", "/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
