"""The docker runtime: an execution's process in a container of the deployment's image.

For: `DockerRuntime`, the `Runtime` of a `runtime: docker` deployment (built per run from its
`docker` settings and RAM request): `start` makes sure the image is there (`pull_policy`),
creates and starts one container running the command with the image's `python`, on the host's
network by default (a Prefect API on 127.0.0.1 is reachable), with the RAM request as its
memory limit (no swap), the run's working directory mounted at the same path, and its output
copied to the log (or to the worker's output). `DockerHandle` waits for the container (an out
of memory kill explained as exceeding the RAM request), signals it, measures its processes as
this machine sees them, and removes it once ended. It talks to the engine through the Docker SDK
client of prefect-docker's `DockerHost` (DOCKER_HOST, or the local socket). What stops a start
(the engine unreachable, the image missing, a create refused) raises `RuntimeStartError` with
what to do. Not for: what to run (`elastic`), admission (the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from prefect_pipedeploy.exceptions import RuntimeStartError
from prefect_pipedeploy.runtimes.base import ProcessExit, Runtime
from prefect_pipedeploy.runtimes.process import explain_exit, runtime_process_of, tree_rss_mib
from prefect_pipedeploy.spec import DeploymentSpec, DockerSettings

#: The worker's environment variables a container does not get: they describe the worker's
#: machine (its paths, its Python), not the image.
HOST_ONLY_VARIABLES = frozenset(
    {
        "PATH",
        "HOME",
        "PWD",
        "OLDPWD",
        "SHELL",
        "USER",
        "LOGNAME",
        "HOSTNAME",
        "TMPDIR",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "LD_LIBRARY_PATH",
        "LD_PRELOAD",
        "DOCKER_HOST",
        "DOCKER_CERT_PATH",
        "DOCKER_TLS_VERIFY",
    }
)
#: Labels every container of the runtime carries.
LABEL = "io.prefect-pipedeploy.runtime"
#: The pid of the worker that started a container: an ended container of a worker that died is
#: removed by the next worker of the machine (`remove_dead_workers_containers`).
WORKER_LABEL = "io.prefect-pipedeploy.worker-pid"


def engine_location() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def docker_client() -> Any:
    """The Docker SDK client of prefect-docker's `DockerHost`; `RuntimeStartError` when no
    engine answers."""
    import docker
    from prefect_docker.host import DockerHost

    try:
        client = DockerHost().get_client()
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise RuntimeStartError(
            f"cannot reach the Docker engine at {engine_location()} ({exc}); start it "
            "(or set DOCKER_HOST), or use runtime: process"
        ) from exc
    return client


def _ensure_image(client: Any, settings: DockerSettings) -> None:
    import docker

    image, policy = settings.image, settings.pull_policy
    if policy != "Always":
        try:
            client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            if policy == "Never":
                raise RuntimeStartError(
                    f"docker.image {image!r} is not on this machine's Docker engine and "
                    "pull_policy is Never; build it (`pipedeploy image build`) or load it "
                    "there, or allow pulling it"
                ) from None
    try:
        client.images.pull(image)
    except docker.errors.DockerException as exc:
        raise RuntimeStartError(
            f"docker.image {image!r} could not be pulled ({exc}); check its name and that "
            "this machine can reach its registry, or build it here (`pipedeploy image build`)"
        ) from exc


def _volumes(
    settings: DockerSettings, cwd: Path | None, same_path: Sequence[Path] = ()
) -> dict[str, dict[str, str]]:
    """The container's mounts: the settings' volumes, then the working directory and the
    folders in `same_path`, each at its own path."""
    mounts: dict[str, dict[str, str]] = {}
    for volume in settings.volumes:
        host, container, *mode = volume.split(":")
        mounts[str(Path(host).expanduser().resolve())] = {
            "bind": container,
            "mode": mode[0] if mode else "rw",
        }
    for folder in ([cwd] if cwd is not None else []) + list(same_path):
        path = str(folder.resolve())
        mounts.setdefault(path, {"bind": path, "mode": "rw"})
    return mounts


class DockerRuntime:
    """Starts executions as containers of one deployment's image."""

    name = "docker"
    shares_descriptors = False

    def __init__(self, settings: DockerSettings, ram_request: str, ram_request_mib: int) -> None:
        self.settings = settings
        self.ram_request = ram_request
        self.ram_request_mib = ram_request_mib

    async def start(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None = None,
        log_path: Path | None = None,
        pass_fds: Sequence[int] = (),
        mounts: Sequence[Path] = (),
    ) -> DockerHandle:
        if pass_fds:  # a defect of the caller, which must check `shares_descriptors`
            raise ValueError("a container cannot inherit the worker's descriptors")
        return await asyncio.to_thread(
            self._start, list(args), dict(env), cwd, log_path, list(mounts)
        )

    def _start(
        self,
        args: list[str],
        env: dict[str, str],
        cwd: Path | None,
        log_path: Path | None,
        mounts: list[Path],
    ) -> DockerHandle:
        import docker

        client = docker_client()
        _ensure_image(client, self.settings)
        environment = {k: v for k, v in env.items() if k not in HOST_ONLY_VARIABLES}
        environment.update(self.settings.env)
        command = ["python", *args[1:]] if args and args[0] == sys.executable else args
        limit = f"{self.ram_request_mib}m"
        kind = (runtime_process_of(args) or ("elastic", ""))[0]
        try:
            container = client.containers.create(
                self.settings.image,
                command=command,
                environment=environment,
                network_mode=self.settings.network_mode,
                volumes=_volumes(self.settings, cwd, mounts),
                working_dir=str(cwd.resolve()) if cwd is not None else None,
                mem_limit=limit,
                memswap_limit=limit,
                labels={LABEL: kind, WORKER_LABEL: str(os.getpid())},
                detach=True,
            )
        except docker.errors.DockerException as exc:
            raise RuntimeStartError(
                f"the Docker engine refused to create a container of {self.settings.image!r} "
                f"({exc}); check the deployment's docker settings (volumes, network_mode)"
            ) from exc
        try:
            container.start()
        except docker.errors.DockerException as exc:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
            raise RuntimeStartError(
                f"the Docker engine could not start a container of {self.settings.image!r} "
                f"({exc}); check that the image has `python` with prefect-pipedeploy"
            ) from exc
        return DockerHandle(container, self.ram_request, log_path)


class DockerHandle:
    """One started container; removed once `wait` has seen it end."""

    def __init__(self, container: Any, ram_request: str, log_path: Path | None) -> None:
        self.container = container
        self.ram_request = ram_request
        self._ended = False
        container.reload()
        self._pid = int(container.attrs.get("State", {}).get("Pid") or 0) or None
        self._copier = threading.Thread(
            target=self._copy_output, args=(log_path,), name="docker-output", daemon=True
        )
        self._copier.start()

    @property
    def identifier(self) -> str:
        return str(self.container.id)

    @property
    def pid(self) -> int | None:
        return self._pid

    def _copy_output(self, log_path: Path | None) -> None:
        out: IO[bytes] = sys.stdout.buffer
        log: IO[bytes] | None = None
        try:
            if log_path is not None:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log = out = open(log_path, "ab")  # noqa: SIM115 - closed below
            for chunk in self.container.logs(stream=True, follow=True):
                out.write(chunk)
                out.flush()
        except Exception:  # the container is gone: its output ends here
            return
        finally:
            if log is not None:
                log.close()

    async def wait(self) -> ProcessExit:
        return await asyncio.to_thread(self._wait)

    def _wait(self) -> ProcessExit:
        import docker

        try:
            code = int(self.container.wait().get("StatusCode", -1))
            self.container.reload()
            oom = bool(self.container.attrs.get("State", {}).get("OOMKilled"))
        except docker.errors.DockerException as exc:  # removed by someone else
            self._ended = True
            return ProcessExit(-1, f"lost its container ({exc})")
        self._ended = True
        self._copier.join(timeout=5)
        with contextlib.suppress(docker.errors.DockerException):
            self.container.remove(force=True)
        if oom:
            return ProcessExit(
                code,
                f"was killed: it exceeded its RAM request of {self.ram_request} (its "
                "container's memory limit); raise ram_request or lower the batch size",
            )
        return ProcessExit(code, explain_exit(code))

    def alive(self) -> bool:
        return not self._ended

    def signal(self, sig: int) -> None:
        import docker

        with contextlib.suppress(docker.errors.DockerException):
            self.container.kill(signal=sig)

    def rss_mib(self) -> float:
        return tree_rss_mib(self._pid) if self._pid else 0.0


def runtime_for(spec: DeploymentSpec, process: Runtime) -> Runtime:
    """The runtime of a deployment's executions: its containers for `runtime: docker`, else
    `process` (the worker's child processes)."""
    if spec.runtime == "docker" and spec.docker is not None:
        return DockerRuntime(spec.docker, spec.ram_request, spec.ram_request_mib)
    return process


def kill_container(identifier: str) -> None:
    """SIGKILL the container `identifier` (gone already: nothing to do)."""
    import docker

    with contextlib.suppress(docker.errors.DockerException, RuntimeStartError):
        docker_client().containers.get(identifier).kill()


def container_of(pid: int) -> str | None:
    """The id of the running container of this runtime whose first process is `pid` (as this
    machine sees it); None when there is none, or no engine."""
    import docker

    try:
        running = docker_client().containers.list(filters={"label": LABEL, "status": "running"})
    except (RuntimeStartError, docker.errors.DockerException):
        return None
    for container in running:
        if int(container.attrs.get("State", {}).get("Pid") or 0) == pid:
            return str(container.id)
    return None


def remove_ended_container(identifier: str, wait_s: float = 30.0) -> str | None:
    """Wait up to `wait_s` for the container `identifier` to end (its first process has), then
    remove it; its name, None when it is gone already or did not end."""
    import docker

    try:
        container = docker_client().containers.get(identifier)
        container.wait(timeout=wait_s)
        container.remove(force=True)
    except (RuntimeStartError, docker.errors.DockerException, OSError):
        return None  # gone already, or still running: a later worker's sweep removes it
    return str(container.name)


def remove_dead_workers_containers() -> list[str]:
    """Remove the ended containers that workers of this machine which died left behind (a live
    worker removes its own once it has read how they ended); their names. Nothing without an
    engine."""
    import docker
    import psutil

    try:
        client = docker_client()
        ended = client.containers.list(all=True, filters={"label": LABEL, "status": "exited"})
    except (RuntimeStartError, docker.errors.DockerException):
        return []
    removed = []
    for container in ended:
        pid = str(container.labels.get(WORKER_LABEL, ""))
        if pid.isdigit() and psutil.pid_exists(int(pid)):
            continue
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)
            removed.append(str(container.name))
    return removed
