"""Helpers shared by the benchmark scripts: statistics, machine figures, system info, CSV, charts.

Nothing here imports torch or a model; MLX and matplotlib are imported where they are used.
"""

import csv
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np

VERSIONED_PACKAGES = ("mlx", "mlx-lm", "mlx-vlm", "transformers", "torch")

# The text workload of both benchmarks: a ~110-token instruction, no image.
TEXT_PROMPT = (
    "You are operating a web browser for a user. The page shows a checkout form with fields for "
    "name, email and shipping address, a country drop-down, a 'Use the same address for billing' "
    "checkbox and two buttons, 'Back to cart' and 'Place order'. The user wants to buy the items in "
    "the cart with express shipping to their office in Lyon. List, step by step, the actions you "
    "would take, naming each control you would click or type into."
)


def text_messages(number: int) -> list[dict]:
    """The text workload's request `number`: a new, numbered system prompt per request (so runs are
    repeatable and only a few template tokens can come from a cache), then TEXT_PROMPT."""
    return [{"role": "system", "content": f"Session {number}. You are a careful assistant."},
            {"role": "user", "content": TEXT_PROMPT}]


# --- statistics -------------------------------------------------------------------------------

def summarize(values: list[float]) -> dict[str, float]:
    """avg, p50, p90 and stdev (0 for a single value) of a list of measurements."""
    if not values:
        raise ValueError("no measurements to summarize")
    return {
        "avg": statistics.fmean(values),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def best_time(run, repeats: int = 3) -> float:
    """Fastest of `repeats` timed calls after one untimed warm-up (the least disturbed run)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


# --- memory -----------------------------------------------------------------------------------

def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux: VmHWM via /proc/self/clear_refs); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size: since the last reset_peak_rss() on Linux, else of the whole process."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    # getrusage reports the same high-water mark, in KiB on Linux and bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_rss_source() -> str:
    if Path("/proc/self/clear_refs").exists():
        return "process RSS peak (VmHWM, reset per request)"
    return "process RSS peak (getrusage ru_maxrss, whole process)"


def total_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_memory_bytes() -> int:
    """Memory a new allocation can get without swapping: MemAvailable on Linux, else total."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return total_memory_bytes()


# --- machine figures --------------------------------------------------------------------------

def memory_bandwidth_gbs(buffer_bytes: int = 512 << 20, repeats: int = 5) -> float:
    """Memory-read bandwidth in GB/s: one numpy sum per core over slices of a buffer far larger
    than any cache, so every byte comes from DRAM (one thread alone does not saturate it)."""
    buffer = np.ones(buffer_bytes // 4, dtype=np.float32)
    cores = os.cpu_count() or 1
    parts = np.array_split(buffer, cores)
    with ThreadPoolExecutor(cores) as pool:  # numpy releases the GIL inside large reductions
        seconds = best_time(lambda: list(pool.map(np.sum, parts)), repeats)
    return buffer.nbytes / seconds / 1e9


def mlx_matmul_gflops(dtype: str = "float32", size: int = 2048, repeats: int = 2) -> float:
    """GFLOP/s of one size x size MLX matmul on the default device, in the given dtype."""
    import mlx.core as mx

    a = mx.random.normal((size, size)).astype(getattr(mx, dtype))
    b = mx.random.normal((size, size)).astype(getattr(mx, dtype))
    mx.eval(a, b)
    seconds = best_time(lambda: mx.eval(a @ b), repeats)
    return 2 * size**3 / seconds / 1e9


# --- system info ------------------------------------------------------------------------------

def cpu_name() -> str:
    if sys.platform == "darwin":
        result = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        return result.stdout.strip() or platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def blas_preloaded() -> str:
    """Whether MLX's CPU backend got OpenBLAS (holo_mlx.runtime.use_fast_blas) or its bundled BLAS."""
    if sys.platform == "darwin":
        return "n/a (Accelerate)"
    return "yes" if "openblas" in os.environ.get("LD_PRELOAD", "") else "no"


def system_info() -> dict[str, str]:
    """Columns that say where a result was measured, for every CSV row."""
    import mlx.core as mx

    info = {
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_name(),
        "cores": str(os.cpu_count()),
        "memory_gb": f"{total_memory_bytes() / 1e9:.1f}",
        "mlx_device": "gpu" if mx.default_device() == mx.gpu else "cpu",
        "python": platform.python_version(),
        "openblas_preloaded": blas_preloaded(),
    }
    info.update({f"{name.replace('-', '_')}_version": package_version(name) for name in VERSIONED_PACKAGES})
    return info


# --- output -----------------------------------------------------------------------------------

def append_csv(path: str | Path, rows: list[dict]) -> None:
    """Append rows; when the columns changed since the file was started, rewrite it with the union."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old_rows: list[dict] = []
    columns: list[str] = []
    if path.exists() and path.stat().st_size:
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            columns = list(reader.fieldnames or [])
            old_rows = list(reader)
    new_columns = [key for row in rows for key in row if key not in columns]
    columns += list(dict.fromkeys(new_columns))
    rewrite = bool(new_columns) or not old_rows
    with path.open("w" if rewrite else "a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        if rewrite:
            writer.writeheader()
            writer.writerows(old_rows)
        writer.writerows(rows)


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Aligned text table; columns are (key, header); floats get 3 significant-ish digits."""
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    cells = [[header for _, header in columns]] + [[cell(row.get(key, "")) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(text.rjust(width) for text, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def grouped_bar_chart(
    path: str | Path,
    rows: list[dict],
    metrics: list[tuple[str, str]],
    group_key: str,
    series_key: str,
    title: str,
) -> None:
    """One panel per metric (key, axis label); groups along x (e.g. workloads), one bar per series."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(row[group_key] for row in rows))
    series = list(dict.fromkeys(row[series_key] for row in rows))
    values = {(row[group_key], row[series_key]): row for row in rows}
    width = 0.8 / len(series)
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.5), squeeze=False)
    colors = plt.get_cmap("tab10")
    for axis, (key, label) in zip(axes[0], metrics):
        for index, name in enumerate(series):
            heights = [float(values[(group, name)][key]) if (group, name) in values else 0.0 for group in groups]
            axis.bar(np.arange(len(groups)) + (index - (len(series) - 1) / 2) * width, heights, width,
                     label=name, color=colors(index % 10))
        axis.set_xticks(np.arange(len(groups)), groups)
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    columns = min(len(series), 5)
    figure.legend(handles, labels, loc="lower center", ncol=columns, fontsize="small")
    figure.suptitle(title, fontsize="medium")
    legend_rows = math.ceil(len(series) / columns)
    figure.tight_layout(rect=(0, 0.05 + 0.04 * legend_rows, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
