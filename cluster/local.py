"""``wsdhq ray start|stop|submit|status|logs``: a local Ray head for development, and its jobs.

``start`` makes sure a token exists (``ray get-auth-token --generate``, kept in ``~/.ray/auth_token``)
and starts the head with ``RAY_AUTH_MODE=token``, so the dashboard and job API refuse clients without
the token, as on a real cluster. ``submit`` ships the working directory (minus data, venvs and run
outputs) with a runtime_env and prints the job id, or follows the logs to the end with ``--follow``.
The same ``submit`` works against a cloud head (``--address http://localhost:8265`` after
``ray dashboard ray_cluster.yaml``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cluster import jobs

DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def ray_executable() -> str:
    """The ``ray`` CLI of this interpreter's environment (not whatever is first on PATH)."""
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if not found:
        raise SystemExit("wsdhq ray: the `ray` command is not installed in this environment")
    return found


def _token_env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "token"}


def _start_cmd(port: int, dashboard_port: int, num_cpus: int | None, num_gpus: int | None,
               temp_dir: str | None, block: bool) -> list[str]:
    cmd = [ray_executable(), "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard_port}", "--disable-usage-stats"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    if temp_dir:
        cmd.append(f"--temp-dir={temp_dir}")
    if block:
        cmd.append("--block")
    return cmd


def token_path() -> Path:
    """Where Ray keeps the token (``ray._private.authentication``: ``~/.ray/auth_token``)."""
    return Path.home() / ".ray" / "auth_token"


def ensure_token() -> Path:
    """Create ``~/.ray/auth_token`` if there is none (Ray's own command; an existing token is kept),
    readable by this user only: created under umask 077 and chmod 0600 (Ray itself writes it 0644,
    and an older token may be 0644 already)."""
    # Ray's INFO record about a new token goes to stderr; it is shown only if the command fails.
    done = subprocess.run([ray_executable(), "get-auth-token", "--generate"], env=_token_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, umask=0o077)
    if done.returncode:
        raise RuntimeError(f"`ray get-auth-token --generate` failed ({done.returncode}): {done.stderr.strip()}")
    path = token_path()
    if path.exists():
        path.chmod(0o600)
    return path


def start(port: int = 6379, dashboard_port: int = 8265, num_cpus: int | None = None,
          num_gpus: int | None = None) -> str:
    """Start a local head (daemonised, token auth on); returns the job API address."""
    ensure_token()
    subprocess.run(_start_cmd(port, dashboard_port, num_cpus, num_gpus, None, False), check=True,
                   env=_token_env())
    return f"http://127.0.0.1:{dashboard_port}"


def stop() -> None:
    """``ray stop``: ends every Ray process of this user on this machine (a laptop's dev head)."""
    subprocess.run([ray_executable(), "stop"], check=True, env=_token_env())


class LocalHead:
    """A head this process owns: ``ray start --block`` in its own temp dir, ended by SIGTERM.

    Unlike ``start``/``stop`` it touches no other Ray instance on the machine (``ray stop`` would end
    them all, and the default temp dir would let another ``ray.init()`` attach to it), so scripts
    and tests can use it on a shared machine.
    """

    def __init__(self, num_cpus: int = 2, startup_timeout_s: float = 120.0):
        self.num_cpus = num_cpus
        self.startup_timeout_s = startup_timeout_s
        self.address = ""
        self._proc: subprocess.Popen | None = None
        self._temp_dir = ""

    def __enter__(self) -> "LocalHead":
        import tempfile
        import time
        import urllib.error
        import urllib.request

        port, dash = _free_port(), _free_port()
        self._temp_dir = tempfile.mkdtemp(prefix="wsdhq-ray-", dir="/tmp")  # short: socket paths
        ensure_token()
        # The agents' ports default to fixed numbers (52365, ...): a second head on the machine
        # (another test, a developer's head) would leave this one without a job agent.
        agent_ports = [f"--{name}={_free_port()}" for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "ray-client-server-port")]
        # Every process of this head (actors, Ray Train's controller and its placement-group cleaner)
        # finds the head by RAY_ADDRESS. Without it, a process asking for "the local Ray instance"
        # looks in the default temp dir, not this head's, then counts the machine's GCS processes,
        # and fails ("Found multiple active Ray instances") when another head runs on the machine.
        env = {**_token_env(), "RAY_ADDRESS": f"{_node_ip()}:{port}"}
        self._proc = subprocess.Popen(
            _start_cmd(port, dash, self.num_cpus, None, self._temp_dir, True) + agent_ports, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.address = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self._proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.address}/api/version", timeout=2)
                return self
            except urllib.error.HTTPError:  # answered (401 without the token): it is up
                return self
            except OSError:
                time.sleep(1)
        self.__exit__(None, None, None)
        raise TimeoutError(f"Ray head did not answer on {self.address} within {self.startup_timeout_s}s")

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait()
        shutil.rmtree(self._temp_dir, ignore_errors=True)


def _node_ip() -> str:
    """The address Ray picks for this node (its ``get_node_ip_address``: the interface of the default
    route; no packet is sent), found without importing ray here: an imported ray fixes its auth mode,
    and the job client must set token mode first."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("8.8.8.8", 80))
            return s.getsockname()[0]
        except OSError:  # no route at all: Ray falls back to loopback too
            return "127.0.0.1"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"wsdhq ray submit: --env {item!r} is not KEY=VALUE")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wsdhq ray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a local Ray head (token auth on)")
    s.add_argument("--port", type=int, default=6379)
    s.add_argument("--dashboard-port", type=int, default=8265)
    s.add_argument("--num-cpus", type=int)
    s.add_argument("--num-gpus", type=int)
    sub.add_parser("stop", help="stop the local Ray processes")
    s = sub.add_parser("submit", help="submit a job: wsdhq ray submit [opts] -- python -m trainer.train ...")
    s.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS))
    s.add_argument("--working-dir", default=".")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--submission-id")
    s.add_argument("--entrypoint-num-gpus", type=float)
    s.add_argument("--follow", action="store_true", help="stream the logs until the job ends")
    s.add_argument("entrypoint", nargs=argparse.REMAINDER)
    for name in ("status", "logs"):
        s = sub.add_parser(name, help=f"a job's {name}")
        s.add_argument("job_id")
        s.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS))
        if name == "logs":
            s.add_argument("--follow", action="store_true")
    a = p.parse_args(argv)

    if a.cmd == "start":
        address = start(a.port, a.dashboard_port, a.num_cpus, a.num_gpus)
        print(f"Ray head up; submit jobs to {address} (token in ~/.ray/auth_token)")
        return 0
    if a.cmd == "stop":
        stop()
        return 0
    if a.cmd == "submit":
        entry = a.entrypoint[1:] if a.entrypoint[:1] == ["--"] else a.entrypoint
        if not entry:
            p.error("submit needs an entrypoint after --")
        job_id = jobs.submit(a.address, entry, a.working_dir, _env_pairs(a.env), a.submission_id,
                             a.entrypoint_num_gpus)
        print(f"submitted {job_id}", flush=True)
        if not a.follow:
            return 0
        final = jobs.follow(a.address, job_id)
        print(f"job {job_id}: {final}")
        return 0 if final == "SUCCEEDED" else 1
    if a.cmd == "status":
        print(jobs.status(a.address, a.job_id))
        return 0
    if a.follow:
        final = jobs.follow(a.address, a.job_id)
        return 0 if final == "SUCCEEDED" else 1
    print(jobs.logs(a.address, a.job_id), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
