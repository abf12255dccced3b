"""A sweep whose jobs each span several machines (``trainer.nodes`` > 1): the same ``-m`` command on every node.
The node that hosts the store at ``trainer.rendezvous`` (the machine at that address; on one machine, the first
to bind the port) leads: it runs the sweeper (its parent run, the grid or the study) and publishes each batch of
jobs before it launches them. The other nodes follow: they launch the same jobs, whose ranks meet in each job's
own rendezvous on that store (torch's c10d rendezvous shares it: ``multi_tenant``), until the leader says the
sweep is over."""
from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import socket
import threading
import time
from datetime import timedelta
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from imgexp.config import ConfigError
from imgexp.errors import describe

log = logging.getLogger(__name__)
KEY = "imgexp-sweep/"
FOLLOW_S = 7 * 24 * 3600  # how long a follower waits for the leader's next batch (a job may train for days)
GOODBYE_S = 60  # how long the leader waits, at the end, for the followers to have read that it is over


def this_machine(host: str) -> bool:
    """Whether ``host`` is an address of this machine (so this node may host the store)."""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return False
    if address.is_loopback:
        return True
    try:
        own = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return False
    return str(address) in own


class SweepNodes:
    """This node's part in a sweep over several nodes: :attr:`leads`, or follows."""

    def __init__(self, store: Any, leads: bool, nodes: int, where: str) -> None:
        self.store, self.leads, self.nodes, self.where = store, leads, nodes, where
        self.published = 0
        self.lock = threading.Lock()  # parallel trials publish from threads

    @classmethod
    def meet(cls, config: DictConfig, arguments: Sequence[str]) -> Optional["SweepNodes"]:
        """Lead or join the sweep at the config's ``trainer.rendezvous``; None for a sweep of one-node jobs."""
        trainer = OmegaConf.select(config, "trainer", default=None)
        if trainer is None or trainer.get("nodes", 1) <= 1:
            return None
        from torch.distributed import TCPStore

        where = trainer.rendezvous
        host, port = where.rsplit(":", 1)
        timeout = timedelta(seconds=trainer.rendezvous_timeout_s)
        store, leads = None, False
        if this_machine(host):
            try:
                store = TCPStore(host, int(port), is_master=True, multi_tenant=True, wait_for_workers=False,
                                 timeout=timeout)
                leads = True
            except (RuntimeError, ValueError):  # the port is taken: another node on this machine leads
                pass
        identity = hashlib.sha256("\n".join(arguments).encode()).hexdigest()[:16]
        try:
            if store is None:
                store = TCPStore(host, int(port), is_master=False, timeout=timeout)
                theirs = store.get(KEY + "sweep").decode()
                if theirs != identity:
                    raise ConfigError("trainer.rendezvous", f"the node leading the sweep at {where} runs another "
                                                            "sweep: start the same command on every node")
                store.set_timeout(timedelta(seconds=FOLLOW_S))
            else:
                store.set(KEY + "sweep", identity)
        except RuntimeError as err:  # torch's DistError: nothing listens there, or no leader came in time
            raise ConfigError("trainer.rendezvous", f"no node leads a sweep at {where} within "
                                                    f"{trainer.rendezvous_timeout_s} s: {describe(err)[:200]}") from None
        log.info("this node %s the sweep over %d nodes at %s", "leads" if leads else "follows", trainer.nodes, where)
        return cls(store, leads, trainer.nodes, where)

    def publish(self, batch: Sequence[Sequence[str]], first_job: int) -> None:
        """Leader: the jobs it launches next (their overrides, and the number of the first)."""
        with self.lock:
            self.store.set(f"{KEY}batch/{self.published}", json.dumps({"jobs": [list(j) for j in batch],
                                                                      "first": first_job}))
            self.published += 1

    def close(self, interrupted: bool = False) -> None:
        """Leader: the sweep is over; wait (a while) until every follower has read so, unless the sweep was
        ``interrupted`` (a node lost, a signal): the followers still there read it while the store lasts."""
        self.store.set(f"{KEY}batch/{self.published}", json.dumps({"end": True}))
        deadline = time.monotonic() + (0 if interrupted else GOODBYE_S)
        while self.store.add(KEY + "left", 0) < self.nodes - 1 and time.monotonic() < deadline:
            time.sleep(0.2)

    def follow(self, launcher: Any) -> list:
        """Follower: launch each batch the leader publishes, until it says the sweep is over; the job returns."""
        returns, n = [], 0
        while True:
            try:
                message = json.loads(self.store.get(f"{KEY}batch/{n}"))
            except RuntimeError as err:
                raise ConfigError("trainer.rendezvous", f"the node leading the sweep at {self.where} was lost: "
                                                        f"{describe(err)[:200]}") from None
            if message.get("end"):
                self.store.add(KEY + "left", 1)
                log.info("the sweep is over: %d jobs followed", len(returns))
                return returns
            returns.extend(launcher.launch(message["jobs"], initial_job_idx=message["first"]))
            n += 1
