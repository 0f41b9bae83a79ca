"""A SLURM cluster of N hosts on one machine, each host a network namespace with its own hostname.

Layout (all of it exists only inside namespaces this class creates; nothing is routed off the machine):

    PREFIX-hub    a bridge `br0` holding CONTROLLER_ADDR; slurmctld runs here (hostname `ctl`), and so do
                  the client commands the tests issue (sbatch, scontrol, squeue, scancel)
    PREFIX-nodeI  interface IFNAME with SUBNET.I, joined to the hub's bridge by a veth pair; hostname
                  `nodeI`; its own /etc/hosts (a bind mount private to the host) naming every host; one
                  slurmd (`-N nodeI`, NodeAddr SUBNET.I)

The namespaces have no route anywhere else and the root namespace has no interface on the subnet, so
traffic can only flow between these hosts. One munged (root namespace) serves them all through its Unix
socket, which every namespace reaches because they share the filesystem. `stop()` kills every process
left in the namespaces, stops munged and deletes the namespaces (which deletes the bridge and veths);
`leftovers()` lists anything that survived, for the tests to assert it is nothing.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.slurm.slurm_cluster import ClusterError, _alive, _read_pid, _tail, _wait_for, start_munged, stop_by_pid_file

SUBNET = "10.213.77"  # a private /24 that exists only inside the cluster's namespaces
CONTROLLER_ADDR = f"{SUBNET}.254"
IFNAME = "mlt0"  # each host's interface on the cluster network (what NCCL/GLOO_SOCKET_IFNAME name)
_COUNTER = itertools.count()

# Runs COMMAND with the host's /etc/hosts and hostname, in a mount and UTS namespace of its own
# (`unshare` makes its mounts private, so the bind mount never reaches the rest of the machine).
_IN_HOST = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'

SLURM_CONF = """\
ClusterName=megatron-llm-netns
SlurmctldHost=ctl({controller})
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmdTimeout=6
MessageTimeout=5
StateSaveLocation={root}/state
SlurmdSpoolDir={sockets}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
{nodes}
PartitionName=test Nodes={node_list} Default=YES MaxTime=INFINITE State=UP
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise ClusterError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def namespaces() -> list[str]:
    """Every network namespace `ip netns` knows."""
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def namespace_pids(name: str) -> list[int]:
    result = _ip("netns", "pids", name, check=False)
    return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []


@dataclass
class NamespaceCluster:
    """N hosts node1..nodeN as network namespaces on a private bridge, SLURM daemons on them."""

    root: Path
    hosts: int = 2
    cpus_per_host: int = 4
    prefix: str = field(default_factory=lambda: f"mlt{os.getpid()}x{next(_COUNTER)}")
    startup_seconds: float | None = None

    @property
    def sockets(self) -> Path:
        """A short directory for munged and the spool directories: Unix socket paths are limited to 107 bytes,
        and slurmstepd's socket names in the spool are long."""
        return Path(tempfile.gettempdir()) / self.prefix

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    @property
    def names(self) -> list[str]:
        return [f"node{i}" for i in range(1, self.hosts + 1)]

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.names.index(host) + 1}"

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def hosts_file(self) -> Path:
        return self.root / "hosts"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    # ---- running things on the hosts -------------------------------------------------------------------

    def on_host(self, host: str, cmd: list[str]) -> list[str]:
        """`cmd` wrapped to run on `host`: its network namespace, hostname and /etc/hosts."""
        namespace = self.hub if host == "ctl" else self.namespace(host)
        # nsenter rather than `ip netns exec`, which remounts /sys and so hides /sys/fs/cgroup from slurmd.
        return ["nsenter", f"--net=/run/netns/{namespace}", "unshare", "--uts", "--mount", "sh", "-c", _IN_HOST,
                "sh", str(self.hosts_file), host, *cmd]

    def client(self, cmd: list[str]) -> list[str]:
        """A SLURM client command (sbatch, scontrol, ...) run where it reaches slurmctld: the hub."""
        return ["ip", "netns", "exec", self.hub, *cmd]

    def run(self, cmd: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        """A client command with this cluster's SLURM_CONF, output captured as text."""
        env = dict(os.environ, **self.env, **kwargs.pop("env", {}))
        return subprocess.run(self.client(cmd), capture_output=True, text=True, timeout=timeout, env=env, **kwargs)

    # ---- start -----------------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self._network()
        self.hosts_file.write_text("127.0.0.1 localhost\n" + f"{CONTROLLER_ADDR} ctl\n"
                                   + "".join(f"{self.address(host)} {host}\n" for host in self.names))
        self.sockets.mkdir(mode=0o700)
        munge_socket = start_munged(self.sockets / "munge")
        (self.root / "state").mkdir(exist_ok=True)
        for host in self.names:
            (self.sockets / f"spool-{host}").mkdir()
        nodes = "\n".join(f"NodeName={host} NodeHostname={host} NodeAddr={self.address(host)} "
                          f"CPUs={self.cpus_per_host} RealMemory=4000 State=UNKNOWN" for host in self.names)
        self.conf.write_text(SLURM_CONF.format(controller=CONTROLLER_ADDR, munge_socket=munge_socket, root=self.root,
                                               sockets=self.sockets, nodes=nodes, node_list=f"node[1-{self.hosts}]"))
        self._daemon("ctl", ["slurmctld", "-f", str(self.conf)], self.root / "slurmctld.pid", "slurmctld.log")
        for host in self.names:
            self.start_slurmd(host)
        _wait_for(self._all_idle, 60, "every node to become idle", self.root / "slurmctld.log")
        self.startup_seconds = time.monotonic() - started

    def _network(self) -> None:
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "addr", "add", f"{CONTROLLER_ADDR}/24", "dev", "br0")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        _ip("-n", self.hub, "link", "set", "lo", "up")
        for index, host in enumerate(self.names, start=1):
            namespace = self.namespace(host)
            _ip("netns", "add", namespace)
            _ip("link", "add", f"veth{index}", "netns", self.hub, "type", "veth", "peer", "name", IFNAME,
                "netns", namespace)
            _ip("-n", self.hub, "link", "set", f"veth{index}", "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{self.address(host)}/24", "dev", IFNAME)
            _ip("-n", namespace, "link", "set", IFNAME, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def _daemon(self, host: str, cmd: list[str], pid_file: Path, log: str) -> None:
        pid_file.unlink(missing_ok=True)
        result = subprocess.run(self.on_host(host, cmd), capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, **self.env))
        if result.returncode != 0:
            raise ClusterError(f"`{' '.join(cmd)}` on {host} failed (exit {result.returncode}): "
                               f"{_tail(result.stdout + result.stderr)}")
        _wait_for(lambda: _read_pid(pid_file) is not None, 30, f"{cmd[0]} on {host} to write its pid file",
                  self.root / log)

    def start_slurmd(self, host: str) -> None:
        """(Re)start `host`'s slurmd, e.g. after `kill_host` (ReturnToService=2 puts it back in service)."""
        self._daemon(host, ["slurmd", "-f", str(self.conf), "-N", host], self.root / f"slurmd-{host}.pid",
                     f"slurmd-{host}.log")

    def node_states(self) -> dict[str, str]:
        result = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=10)
        if result.returncode != 0:
            return {}
        return dict(line.split() for line in result.stdout.splitlines() if line.strip())

    def _all_idle(self) -> bool:
        states = self.node_states()
        return all(states.get(host) == "idle" for host in self.names)

    # ---- failures --------------------------------------------------------------------------------------

    def kill_host(self, host: str) -> list[int]:
        """SIGKILL every process in `host`'s namespace (slurmd, its job steps, the ranks): the host dies."""
        killed = namespace_pids(self.namespace(host))
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return killed

    # ---- stop ------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel jobs, kill everything in the namespaces, stop munged, delete the namespaces."""
        if self.hub in namespaces() and _read_pid(self.root / "slurmctld.pid") is not None:
            try:
                self.run(["scancel", "--user", str(os.getuid())], timeout=15)
            except subprocess.TimeoutExpired:
                pass
        own = [name for name in namespaces() if name.startswith(f"{self.prefix}-")]
        deadline = time.monotonic() + 30
        while True:
            remaining = [pid for name in own for pid in namespace_pids(name) if _alive(pid)]
            if not remaining or time.monotonic() > deadline:
                break
            for pid in remaining:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        stop_by_pid_file(self.sockets / "munge" / "munged.pid")
        for name in own:
            _ip("netns", "del", name, check=False)
        shutil.rmtree(self.sockets, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What `stop()` should have removed and did not: namespaces, processes in them, munged."""
        found = [f"namespace {name}" for name in namespaces() if name.startswith(f"{self.prefix}-")]
        found += [f"process {pid} in {name}" for name in namespaces() if name.startswith(f"{self.prefix}-")
                  for pid in namespace_pids(name)]
        munged = _read_pid(self.sockets / "munge" / "munged.pid")
        if munged is not None and _alive(munged):
            found.append(f"munged {munged}")
        if self.sockets.exists():
            found.append(f"directory {self.sockets}")
        for pid_file in self.root.glob("*.pid"):
            pid = _read_pid(pid_file)
            if pid is not None and _alive(pid):
                found.append(f"{pid_file.stem} {pid}")
        links = _ip("-o", "link", "show").stdout
        found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
                  if IFNAME in line or self.prefix in line]
        return found
