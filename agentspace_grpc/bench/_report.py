"""Turn a run's figures into ratios, target checks, a markdown table, the JSON file and a chart.

Ratios are computed within each repetition (the stacks of one repetition ran back to back,
so they saw the same host) and then summarized as median [min-max] over the repetitions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agentspace_grpc.bench import _measure, _stacks

MODE_LABELS = {"sequential": "sequential", "concurrent": "64 in flight"}


def _values(results: dict[str, Any], key: str, mode: str, metric: str) -> list[float] | None:
    stack = results["stacks"].get(key)
    if stack is None or stack["status"] != "ok" or mode not in stack["modes"]:
        return None
    values: list[float] = stack["modes"][mode][metric]["values"]
    return values


def paired_ratio(
    results: dict[str, Any], key: str, other: str, mode: str, metric: str
) -> dict[str, Any] | None:
    """Per-repetition ratio ``key / other`` of one metric, summarized; None if either is missing."""
    a = _values(results, key, mode, metric)
    b = _values(results, other, mode, metric)
    if a is None or b is None:
        return None
    ratios = [x / y for x, y in zip(a, b, strict=False) if y and not math.isnan(x / y)]
    return _measure.spread(ratios) if ratios else None


# ---- targets ----------------------------------------------------------------------------


def _target(
    name: str, ratio: dict[str, Any] | None, limit: float, kind: str, missing: str
) -> dict[str, Any]:
    """``kind`` is "max" (ratio <= limit), "below" (ratio < limit) or "min" (ratio >= limit)."""
    if ratio is None:
        return {"target": name, "ratio": None, "limit": limit, "result": "n/a", "note": missing}
    value = ratio["median"]
    ok = {"max": value <= limit, "below": value < limit, "min": value >= limit}[kind]
    return {
        "target": name,
        "ratio": round(value, 3),
        "spread": [round(ratio["min"], 3), round(ratio["max"], 3)],
        "limit": limit,
        "result": "pass" if ok else "miss",
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its ratio and pass/miss."""
    out: list[dict[str, Any]] = []
    cpu = "cpu_us_per_call"
    for mode in ("sequential", "concurrent"):
        label = MODE_LABELS[mode]
        out.append(
            _target(
                f"gRPC CPU/call <= 1.10x raw stub ({label})",
                paired_ratio(results, "agentspace_grpc", "grpc_stub", mode, cpu),
                1.10,
                "max",
                "agentspace gRPC or the raw stub did not run",
            )
        )
        out.append(
            _target(
                f"REST CPU/call <= 1.15x raw aiohttp ({label})",
                paired_ratio(results, "agentspace_rest", "aiohttp_raw", mode, cpu),
                1.15,
                "max",
                "agentspace REST or raw aiohttp did not run",
            )
        )
    for workload, about in results.get("workloads", {}).items():
        for mode in ("sequential", "concurrent"):
            for wire, floor, limit in (("grpc", "raw stub", 1.10), ("rest", "raw aiohttp", 1.15)):
                base = _stacks.GRPC_FLOOR if wire == "grpc" else _stacks.REST_FLOOR
                out.append(
                    _target(
                        f"{'gRPC' if wire == 'grpc' else 'REST'} CPU/call <= {limit:.2f}x "
                        f"{floor} ({about['title']}, {MODE_LABELS[mode]}, single-flight on)",
                        paired_ratio(
                            results,
                            f"agentspace_{wire}_{workload}",
                            f"{base}_{workload}",
                            mode,
                            cpu,
                        ),
                        limit,
                        "max",
                        f"a {about['title']} stack did not run",
                    )
                )
    costs = results.get("single_flight_cost", {})
    for wire, floor, limit in (("grpc", "raw stub", 1.10), ("rest", "raw aiohttp", 1.15)):
        cost = costs.get(wire, {})
        out.append(
            _target(
                f"{'gRPC' if wire == 'grpc' else 'REST'} CPU/call <= {limit:.2f}x {floor} "
                "(sequential, single-flight on: the default)",
                cost.get("on_vs_floor") if cost.get("status") == "ok" else None,
                limit,
                "max",
                cost.get("reason", "the single-flight cost run did not happen"),
            )
        )
    for wire in ("grpc", "rest"):
        for mode in ("sequential", "concurrent"):
            out.append(
                _target(
                    f"{wire.upper() if wire == 'rest' else 'gRPC'} CPU/call below GAPIC-style "
                    f"({MODE_LABELS[mode]})",
                    paired_ratio(results, f"agentspace_{wire}", "gapic", mode, cpu),
                    1.0,
                    "below",
                    f"agentspace {wire} or the GAPIC-style stack did not run",
                )
            )
    for wire, floor in (("grpc", "grpc_stub"), ("rest", "aiohttp_raw")):
        target = _target(
            f"{'gRPC' if wire == 'grpc' else 'REST'} calls/s >= 2x google-api-python-client "
            "(64 in flight)",
            paired_ratio(results, f"agentspace_{wire}", "discovery", "concurrent", "calls_per_s"),
            2.0,
            "min",
            f"agentspace {wire} or google-api-python-client did not run",
        )
        # What the floor of the same wire reaches against the same server, for context: a
        # server that saturates first caps every stack of that wire.
        context = paired_ratio(results, floor, "discovery", "concurrent", "calls_per_s")
        if context is not None:
            target["floor_ratio"] = round(context["median"], 3)
        out.append(target)
    for wire in ("grpc", "rest"):
        entry = results.get("single_flight", {}).get(f"{wire}_on", {})
        name = f"single-flight {'gRPC' if wire == 'grpc' else 'REST'}: 1000 acquires -> 1 RPC"
        if entry.get("status") != "ok":
            out.append(
                {
                    "target": name,
                    "ratio": None,
                    "limit": 1,
                    "result": "n/a",
                    "note": entry.get("reason", "not run"),
                }
            )
        else:
            rpcs = entry["rpcs"]
            out.append(
                {
                    "target": name,
                    "ratio": rpcs,
                    "limit": 1,
                    "result": "pass" if rpcs == 1 else "miss",
                }
            )
    out += _cache_targets(results)
    out.append(
        _target(
            "emulator cache-hit gRPC calls/s >= 0.75x constant server (64 in flight)",
            paired_ratio(
                results, "emulator_cache_hit_grpc", "agentspace_grpc", "concurrent", "calls_per_s"
            ),
            0.75,
            "min",
            "the emulator runs did not happen",
        )
    )
    return out


def _cache_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """A token cache hit costs at most 20 µs of client CPU and no RPC; its miss path at most
    1.05x the client without a cache."""
    out: list[dict[str, Any]] = []
    for wire in ("grpc", "rest"):
        label = "gRPC" if wire == "grpc" else "REST"
        stack = results["stacks"].get(f"agentspace_{wire}_cache_hit", {})
        modes = stack.get("modes", {}) if stack.get("status") == "ok" else {}
        missing = f"the {label} cache-hit stack did not run"
        for mode in ("sequential", "concurrent"):
            out.append(
                _target(
                    f"{label} token cache hit: CPU µs/call <= 20 ({MODE_LABELS[mode]})",
                    modes.get(mode, {}).get("cpu_us_per_call"),
                    20.0,
                    "max",
                    missing,
                )
            )
        rpcs = [
            figures["rpcs_per_call"] for figures in modes.values() if "rpcs_per_call" in figures
        ]
        name = f"{label} token cache hit: RPCs at the server per call"
        if rpcs:
            worst = max(rpcs)
            out.append(
                {
                    "target": name,
                    "ratio": worst,
                    "limit": 0,
                    "result": "pass" if worst == 0 else "miss",
                }
            )
        else:
            out.append(
                {"target": name, "ratio": None, "limit": 0, "result": "n/a", "note": missing}
            )
        cost = results.get("cache_miss_cost", {}).get(wire, {})
        out.append(
            _target(
                f"{label} CPU/call with a token cache, miss path <= 1.05x without (sequential)",
                cost.get("on_vs_off") if cost.get("status") == "ok" else None,
                1.05,
                "max",
                cost.get("reason", "the cache miss cost run did not happen"),
            )
        )
    return out


def finalize(results: dict[str, Any]) -> dict[str, Any]:
    """Add ratios to each stack's baseline and the target checks."""
    for key, stack in results["stacks"].items():
        baseline = stack.get("baseline")
        for mode, figures in stack["modes"].items():
            if baseline:
                figures["ratio_to_baseline"] = {
                    metric: paired_ratio(results, key, baseline, mode, metric)
                    for metric in ("cpu_us_per_call", "calls_per_s")
                }
    results["targets"] = targets(results)
    return results


# ---- the table ----------------------------------------------------------------------------


def _fmt(value: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _cell(figure: dict[str, Any] | None, digits: int) -> str:
    if figure is None or math.isnan(figure["median"]):
        return "-"
    low, high = _fmt(figure["min"], digits), _fmt(figure["max"], digits)
    return f"{_fmt(figure['median'], digits)} [{low}-{high}]"


def _ratio_cell(ratio: dict[str, Any] | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio['median']:.2f}x [{ratio['min']:.2f}-{ratio['max']:.2f}]"


def _busy(figure: dict[str, Any] | None) -> str:
    return "-" if figure is None else f"{figure['median']:.2f}"


def _rows(results: dict[str, Any], group: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, stack in results["stacks"].items():
        if stack["group"] == group:
            yield key, stack


def _stack_table(results: dict[str, Any], group: str, ratio_label: str) -> list[str]:
    lines = [
        f"| stack | mode | calls/s | CPU µs/call | p50 ms | p99 ms | CPU/call {ratio_label} "
        f"| calls/s {ratio_label} | server busy |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    skipped: list[str] = []
    for _, stack in _rows(results, group):
        if stack["status"] != "ok":
            skipped.append(f"- {stack['title']}: {stack['status']}: {stack['reason']}")
            continue
        for mode, figures in stack["modes"].items():
            ratios = figures.get("ratio_to_baseline") or {}
            base = stack.get("baseline")
            cpu_ratio = _ratio_cell(ratios.get("cpu_us_per_call")) if base else "1.00x (base)"
            rate_ratio = _ratio_cell(ratios.get("calls_per_s")) if base else "1.00x (base)"
            lines.append(
                f"| {stack['title']} | {MODE_LABELS[mode]} "
                f"| {_cell(figures['calls_per_s'], 0)} | {_cell(figures['cpu_us_per_call'], 0)} "
                f"| {_cell(figures['p50_ms'], 2)} | {_cell(figures['p99_ms'], 2)} "
                f"| {cpu_ratio} | {rate_ratio} | {_busy(figures.get('server_busy'))} |"
            )
    return lines + (["", *skipped] if skipped else [])


def _served(results: dict[str, Any], group: str) -> list[str]:
    """The stacks of ``group`` whose calls did not each reach the server as an RPC."""
    saved = [
        f"{stack['title']} ({MODE_LABELS[mode]}) {figures['rpcs_per_call']:.3f}"
        for _, stack in _rows(results, group)
        for mode, figures in stack["modes"].items()
        if figures.get("rpcs_per_call", 1.0) != 1.0
    ]
    if not saved:
        return ["Every call of every stack above reached the server as an RPC of its own."]
    return [f"RPCs at the server per call: {'; '.join(saved)}."]


def _placement(results: dict[str, Any]) -> str:
    cpus = results.get("server_cpus")
    if not cpus:
        return "The client and the servers shared every CPU."
    where = ",".join(str(cpu) for cpu in cpus)
    return f"The servers kept to CPU {where}; the client could use every CPU."


def table(results: dict[str, Any]) -> str:
    """The whole report as markdown."""
    machine = results["machine"]
    versions = results["versions"]
    settings = results["settings"]
    load = results["load_average"]
    out = [
        f"# agentspace-grpc benchmark ({results['started_at']}, {results['duration_s']} s)",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine['memory_gb']} GB, {machine['platform']}; load average "
        f"{load['before'][0]:.2f} before, {load['after'][0]:.2f} after. {_placement(results)}",
        f"Python {versions['python']}, grpcio {versions['grpcio']}, protobuf "
        f"{versions['protobuf']} ({versions['protobuf_backend']}), aiohttp {versions['aiohttp']}, "
        f"google-api-core {versions['google-api-core']}, google-api-python-client "
        f"{versions['google-api-python-client']}.",
        f"{settings['repeats']} repetitions, up to {settings['size']} calls per sample, "
        f"{settings['inflight']} in flight for the concurrent mode. Figures: median "
        "[min-max] over the repetitions; ratios are taken within each repetition. "
        "Server busy: the server process's CPU time over the sample's wall time (1.00 = one "
        "core saturated: the server set the pace).",
        "",
        "## Transport cost (constant-answer servers; base: raw stub for gRPC, raw aiohttp "
        "for REST)",
        "",
        *_stack_table(results, "transport", "vs base"),
        "",
        *_served(results, "transport"),
        "",
        "## Emulator end to end (agentspace-grpc client; base: the same client on the "
        "constant-answer server)",
        "",
    ]
    if any(True for _ in _rows(results, "emulator")):
        out += _stack_table(results, "emulator", "vs constant")
        refreshes = [
            f"{stack['title']} ({MODE_LABELS[mode]}) {figures['upstream_refreshes_per_call']:.2f}"
            for _, stack in _rows(results, "emulator")
            for mode, figures in stack["modes"].items()
            if "upstream_refreshes_per_call" in figures
        ]
        if refreshes:
            out += ["", f"Upstream refreshes per acquire: {'; '.join(refreshes)}."]
    else:
        out.append(f"Not run: {results['emulator']}")
    out += [
        "",
        "## Many users, many connectors (constant-answer servers; single-flight on, the "
        "default; every cache warm)",
        "",
    ]
    out += [f"- {about['title']}: {about['what']}." for about in results["workloads"].values()]
    out += [
        "- Each base (raw stub, raw aiohttp) sends the same users' headers and connectors' "
        "names, one per call.",
        "",
        *_stack_table(results, "workload", "vs base"),
    ]
    out += ["", *_served(results, "workload")]
    out += ["", "## Single-flight (1000 concurrent identical acquires, one client)", ""]
    out += ["| wire | single-flight | RPCs at the server | wall ms |", "|---|---|--:|--:|"]
    for key, entry in results.get("single_flight", {}).items():
        wire, _, state = key.partition("_")
        if entry.get("status") == "ok":
            out.append(
                f"| {'gRPC' if wire == 'grpc' else 'REST'} | {state} | {entry['rpcs']} "
                f"| {entry['elapsed_ms']:,.1f} |"
            )
        else:
            out.append(f"| {wire} | {state} | {entry.get('status')}: {entry.get('reason')} | - |")
    out += _cost_table(
        results.get("single_flight_cost", {}),
        "Single-flight bookkeeping (sequential calls, nothing shared; CPU µs per call)",
        ("client, single-flight off", "client, single-flight on (default)", "on - off"),
        ("off_vs_floor", "off vs floor"),
        ("on_vs_floor", "on vs floor"),
    )
    out += _cost_table(
        results.get("cache_miss_cost", {}),
        "Token cache, miss path (sequential calls; every lookup finds its entry expired, "
        "every answer is stored; CPU µs per call)",
        ("client, no cache", "client, cache missing", "miss - none"),
        ("on_vs_off", "miss vs none"),
        ("on_vs_floor", "miss vs floor"),
    )
    out += _cost_table(
        results.get("tracing_cost", {}),
        "Tracing (sequential calls; OpenTelemetry SDK providers, spans batched to an exporter "
        "that drops them; CPU µs per call)",
        ("client, no provider (no span made)", "client, SDK providers", "on - off"),
        ("on_vs_off", "on vs off"),
        ("off_vs_floor", "off vs floor"),
    )
    fallback = results.get("fallback", {})
    out += ["", "## Fallback (auto mode, gRPC port closed; fresh client each time)", ""]
    if fallback.get("status") == "ok":
        out += [
            "| first call | ms |",
            "|---|--:|",
            f"| auto, falling back to REST | {_cell(fallback['auto_first_call_ms'], 2)} |",
            f"| auto, second call (REST in use) | {_cell(fallback['auto_second_call_ms'], 2)} |",
            f"| REST only | {_cell(fallback['rest_first_call_ms'], 2)} |",
            f"| fallback overhead | {_cell(fallback['fallback_overhead_ms'], 2)} |",
        ]
    else:
        out.append(f"{fallback.get('status', 'not run')}: {fallback.get('reason', '')}")
    out += ["", "## Targets", "", "| target | ratio [min-max] | limit | result |"]
    out.append("|---|--:|--:|---|")
    for target in results["targets"]:
        ratio = target["ratio"]
        if ratio is None:
            shown = f"- ({target.get('note', '')})"
        elif "spread" in target:
            shown = f"{ratio:.2f} [{target['spread'][0]:.2f}-{target['spread'][1]:.2f}]"
        else:
            shown = str(ratio)
        if "floor_ratio" in target:
            shown += f" (floor: {target['floor_ratio']:.2f})"
        out.append(f"| {target['target']} | {shown} | {target['limit']} | {target['result']} |")
    return "\n".join(out) + "\n"


# ---- files ------------------------------------------------------------------------------


def write_json(results: dict[str, Any], path: Path) -> None:
    """All figures, NaN written as null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(results), indent=1) + "\n", encoding="utf-8")


def write_chart(results: dict[str, Any], path: Path) -> None:
    """CPU per call and calls per second by stack (transport runs), min-max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = [s for _, s in _rows(results, "transport") if s["status"] == "ok"]
    titles = [s["title"] for s in stacks]
    figure, axes = plt.subplots(1, 2, figsize=(12, 0.9 * max(len(stacks), 3) + 1.6))
    panels: Sequence[tuple[str, str]] = (
        ("cpu_us_per_call", "client CPU µs per call (lower is better)"),
        ("calls_per_s", "calls per second (higher is better)"),
    )
    height = 0.38
    for axis, (metric, label) in zip(axes, panels, strict=True):
        for offset, mode, color in (
            (-height / 2, "sequential", "#4c72b0"),
            (height / 2, "concurrent", "#dd8452"),
        ):
            medians, lows, highs = [], [], []
            for stack in stacks:
                fig = stack["modes"].get(mode, {}).get(metric)
                median = fig["median"] if fig else math.nan
                medians.append(0.0 if math.isnan(median) else median)
                lows.append(0.0 if not fig or math.isnan(median) else median - fig["min"])
                highs.append(0.0 if not fig or math.isnan(median) else fig["max"] - median)
            positions = [i + offset for i in range(len(stacks))]
            axis.barh(
                positions,
                medians,
                height=height,
                xerr=[lows, highs],
                color=color,
                label=MODE_LABELS[mode],
                capsize=3,
            )
        axis.set_yticks(range(len(stacks)), titles)
        axis.invert_yaxis()
        axis.set_xlabel(label)
        axis.grid(axis="x", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncols=2, frameon=False)
    machine = results["machine"]
    figure.suptitle(
        f"AcquireAccessToken against constant-answer servers: {machine['cpu_model']}, "
        f"{machine['cores']} cores (median of {results['settings']['repeats']}, min-max bars)",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.07, 1, 0.96))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _cost_table(
    costs: dict[str, Any],
    heading: str,
    columns: tuple[str, str, str],
    first: tuple[str, str],
    second: tuple[str, str],
) -> list[str]:
    """A cost comparison (floor, the client off, the client on) per wire; ``first`` and
    ``second`` name the two ratio fields shown and their column titles."""
    out = [
        "",
        f"## {heading}",
        "",
        f"| wire | floor | {' | '.join(columns)} | {first[1]} | {second[1]} |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for wire, cost in costs.items():
        label = "gRPC" if wire == "grpc" else "REST"
        if cost.get("status") != "ok":
            out.append(f"| {label} | {cost.get('status')}: {cost.get('reason')} | | | | | |")
            continue
        out.append(
            f"| {label} ({cost['floor']}) | {_cell(cost['floor_cpu_us_per_call'], 0)} "
            f"| {_cell(cost['off_cpu_us_per_call'], 0)} | {_cell(cost['on_cpu_us_per_call'], 0)} "
            f"| {_cell(cost['on_minus_off_us'], 1)} | {_ratio_cell(cost[first[0]])} "
            f"| {_ratio_cell(cost[second[0]])} |"
        )
    return out
