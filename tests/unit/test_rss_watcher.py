"""The one RSS watcher: a process over its RAM request is killed, named, and no longer watched.

Pure: the handles are in-memory stand-ins that report a given RSS and record signals (the real
kill of a real process over its request is in the end-to-end admission tests).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from prefect_pipedeploy.worker.ram import RssWatcher, ram_exceeded


@dataclass
class Handle:
    rss: list[float]
    signals: list[int] = field(default_factory=list)
    identifier: str = "1"
    pid: int | None = 1

    def rss_mib(self) -> float:
        return self.rss.pop(0) if len(self.rss) > 1 else self.rss[0]

    def signal(self, sig: int) -> None:
        self.signals.append(sig)

    async def wait(self) -> None:  # pragma: no cover - not used by the watcher
        raise NotImplementedError


def test_a_process_over_its_request_is_killed_with_its_peak_named() -> None:
    watcher = RssWatcher()
    over, under = Handle([100, 300, 700]), Handle([100])
    said: list[str] = []
    watcher.watch("run:a", over, 512, "512MiB", said.append)
    watcher.watch("run:b", under, 512, "512MiB", lambda m: said.append("wrong"))
    watcher.check_once()
    watcher.check_once()
    assert over.signals == [] and said == []
    watcher.check_once()
    assert over.signals == [signal.SIGKILL]
    assert said == [ram_exceeded("512MiB", 700)]
    assert "raise ram_request or lower the batch size" in said[0]
    watcher.check_once()  # killed once: it is no longer watched
    assert over.signals == [signal.SIGKILL] and under.signals == []
    assert watcher.unwatch("run:b") == 100


def test_unwatch_returns_the_peak_and_stops_watching() -> None:
    watcher = RssWatcher()
    handle = Handle([50, 200, 10])
    watcher.watch("pod:x", handle, 1024, "1GiB", lambda m: None)
    for _ in range(3):
        watcher.check_once()
    assert watcher.unwatch("pod:x") == 200
    assert watcher.unwatch("pod:x") == 0.0
