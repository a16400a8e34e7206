"""The simulated runtime: how long a warm claim and a cold start take, drawn from measured distributions
(runtime_defaults.json, or bench output given to `--refresh-from`), and how concurrent starts share the cores."""
import json
from bisect import bisect_right
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULTS_FILE = Path(__file__).with_name("runtime_defaults.json")
DEFAULT_PROFILE = "code-server"


class RuntimeDataError(ValueError):
    """A runtime file (defaults or bench output) that cannot be read as distributions."""


@dataclass(frozen=True)
class Quantiles:
    """A distribution given by some of its quantiles ({"p50": 0.3, ...}); sampled by linear interpolation of the
    inverse CDF between them (p0 and p100 bound it)."""

    points: tuple  # ((probability 0..1, value), ...) sorted, from 0 to 1

    @classmethod
    def of(cls, quantiles):
        points = sorted((float(key.lstrip("p")) / 100, float(value)) for key, value in quantiles.items())
        if len(points) < 2 or points[0][0] != 0 or points[-1][0] != 1:
            raise RuntimeDataError(f"a distribution needs p0 and p100 and is {quantiles}")
        if any(b[1] < a[1] for a, b in zip(points, points[1:], strict=False)) or points[0][1] < 0:
            raise RuntimeDataError(f"quantiles must be non-negative and rise: {quantiles}")
        return cls(tuple(points))

    def value_at(self, u):
        probabilities = [p for p, _ in self.points]
        i = min(max(bisect_right(probabilities, u), 1), len(self.points) - 1)
        (p0, v0), (p1, v1) = self.points[i - 1], self.points[i]
        return v0 + (v1 - v0) * ((u - p0) / (p1 - p0) if p1 > p0 else 0)

    def sample(self, rng):
        return self.value_at(rng.random())

    def quantile(self, p):
        return self.value_at(p / 100)


@dataclass(frozen=True)
class RuntimeModel:
    """What the engine does, as the simulator sees it."""

    warm_open: Quantiles  # a warm open: the claim, the bind, the token (seconds)
    cold_start: Quantiles  # one container's start to ready and its first page, alone on the machine
    cpu_per_start: float  # CPU seconds a start needs (engine + the IDE's own start)
    cores: int
    sources: tuple = ()

    def start_duration(self, rng, *, in_flight):
        """A cold start that begins with `in_flight` starts running (itself included): alone it takes its sampled
        time; beyond the cores, its CPU part is stretched by the starts sharing them (CPU × starts ÷ cores)."""
        alone = self.cold_start.sample(rng)
        return alone + self.cpu_per_start * max(0.0, in_flight / self.cores - 1)

    def lead_time(self):
        """The time a claimed container takes to be replaced: a start at its p95 (the refill's nudge is the
        engine's settings, added by the caller)."""
        return self.cold_start.quantile(95)


def runtime_load(profile=DEFAULT_PROFILE, *, refresh_from=()):
    """The runtime of `profile` from the defaults file, with what the bench files in `refresh_from` measured."""
    data = json.loads(DEFAULTS_FILE.read_text())
    if profile not in data["profiles"]:
        raise RuntimeDataError(f"unknown runtime profile '{profile}' (choose from {', '.join(data['profiles'])})")
    raw = data["profiles"][profile]
    model = RuntimeModel(warm_open=Quantiles.of(raw["warm_open_s"]), cold_start=Quantiles.of(raw["cold_start_s"]),
                         cpu_per_start=float(raw["cpu_per_start_s"]), cores=int(data["cores"]),
                         sources=(f"{DEFAULTS_FILE.name} [{profile}]",))
    for path in refresh_from:
        model = runtime_refresh(model, path)
    return model


def _ms_quantiles(row, scale=1000):
    """A bench row's p50/p95/p99/max (ms) as Quantiles in seconds, p0 taken as 0.8 × p50."""
    p50, p95, p99 = row["p50_ms"] / scale, row["p95_ms"] / scale, row["p99_ms"] / scale
    top = row.get("max_ms", row["p99_ms"]) / scale
    return Quantiles.of({"p0": 0.8 * p50, "p50": p50, "p95": p95, "p99": p99, "p100": max(top, p99)})


def runtime_refresh(model, path):
    """`model` with what one bench JSON output measured: bench/claim.py (`sequential_warm`, `cold_start`: the warm
    and cold open times) or bench/cold_phases.py (`rows`: the engine CPU per start, and the lone start's
    total; `stream`: the CPU per start)."""
    try:
        text = Path(path).read_text()
        # The benches print one JSON line, then a table: take the last line that is a JSON object.
        lines = [line for line in text.splitlines() if line.strip().startswith("{")]
        data = json.loads(lines[-1]) if lines else json.loads(text)
    except (OSError, ValueError) as exc:
        raise RuntimeDataError(f"{path}: not a bench JSON output ({exc})") from exc
    return runtime_refresh_data(model, data, source=str(path))


def runtime_refresh_data(model, data, *, source):
    """`model` with the figures of one bench output already parsed (`runtime_refresh`)."""
    path = source
    changed = {}
    try:
        if data.get("sequential_warm", {}).get("n"):
            changed["warm_open"] = _ms_quantiles(data["sequential_warm"])
        if data.get("cold_start", {}).get("n"):
            changed["cold_start"] = _ms_quantiles(data["cold_start"])
        rows = data.get("rows") or data.get("stream") or []
        cpu = [row["engine_cpu_ms_each"] for row in rows if row.get("engine_cpu_ms_each")]
        if cpu:
            changed["cpu_per_start"] = sorted(cpu)[len(cpu) // 2] / 1000
        alone = [row for row in data.get("rows", []) if row.get("parallel") == 1 and row.get("total", {}).get("p50")]
        if alone and "cold_start" not in changed:
            total = alone[0]["total"]
            p50, top = total["p50"] / 1000, (total.get("max") or total["p50"]) / 1000
            p95 = max(p50, (total.get("p95") or 0) / 1000)
            changed["cold_start"] = Quantiles.of({"p0": 0.8 * p50, "p50": p50, "p95": p95, "p99": max(p95, top),
                                                  "p100": max(p95, top)})
        if data.get("cpus"):
            changed["cores"] = int(data["cpus"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise RuntimeDataError(f"{path}: unexpected bench output ({exc!r})") from exc
    if not changed:
        raise RuntimeDataError(f"{path}: holds no figure the simulator uses (bench/claim.py or bench/cold_phases.py "
                               "JSON output)")
    return replace(model, **changed, sources=(*model.sources, f"{path}: {', '.join(sorted(changed))}"))
