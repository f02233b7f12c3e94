"""Reset versus carried state (truncated BPTT) on E. coli and Austen, at equal steps and tokens.

    python scripts/carried_state_experiment.py --out results/carried_state            # full (36 min on 2 cores)
    python scripts/carried_state_experiment.py --quick --out results/carried_state_q  # smaller models, 1000 steps (not timed)

For each corpus (``ecoli``: configs/experiment/dna_ecoli.yaml, ``austen``: text_austen.yaml) two
models are trained with one config, seed, number of steps, batch size and a deliberately short
``data.seq_len``, both on ``data.window_sampling=contiguous`` (each batch row reads one long stream,
window after window, so both arms see exactly the same batches):

    reset     model.carry_state=false   every window starts from the zero state
    carried   model.carry_state=true    each window starts from the state the row's previous window
                                        left (detached: truncated BPTT)

Document resets (``data.reset_at_documents``, on by default) apply to both: the state is zeroed at
every Austen paragraph start (an ``<eos>`` input) and at the start of every stream section.

Each trained checkpoint (``last.ckpt``, loaded with ``ssm_train.generate.load_backbone``) is then
evaluated on the held-out split, in three modes:

    reset     every window from the zero state (how the reset arm was trained)
    carried   the state carried from window to window (how the carried arm was trained)
    warm1     each window starts from the state that the previous window alone leaves, run from
              zero: every token sees between seq_len and 2 seq_len tokens of context, so
              ``carried`` against ``warm1`` is what memory *beyond* seq_len tokens is worth

(a) held-out bits per token over the whole held-out split, cut into ``data.batch_size`` streams as
    the trainer's validation cuts it (all windows, not only ``trainer.limit_val_batches``);
(b) per-token loss against position: the held-out split cut into as many streams of
    ``stream_windows × seq_len`` tokens as it holds, read window by window, bucketed by position
    within the window, by window index since the stream start, and by tokens since the last state
    reset (document or stream start).

It writes ``OUT/carried_state.json`` (every number) and ``OUT/carried_state.png`` (loss against
position), the training logs and run directories under ``OUT/``, and prints markdown tables. Each
training run is a ``python -m ssm_train fit`` subprocess with ``OMP_NUM_THREADS=1``, at most
``--jobs`` (2) at a time; the evaluation runs in this process on one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ARMS = ("reset", "carried")
MODES = ("reset", "carried", "warm1")
MODE_NAMES = {"reset": "reset each window", "carried": "carried", "warm1": "warm-up of 1 window"}

# corpus -> experiment config, data file under --data-root, overrides that contiguous streams need
CORPORA: dict[str, dict[str, Any]] = {
    "ecoli": {"config": "configs/experiment/dna_ecoli.yaml", "data": "genomics/ecoli_k12_mg1655.fa.gz",
              "extra": ["data.reverse_complement=false"], "unit": "base"},
    "austen": {"config": "configs/experiment/text_austen.yaml", "data": "text/austen.txt.gz",
               "extra": [], "unit": "character"},
}

# sizes: the model keys per corpus (the rest of the model is the experiment config's)
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"steps": 4000, "seq_len": 64, "batch_size": 32, "stream_windows": 16, "limit_val_batches": 16,
             "model": {"ecoli": {"d_model": 96, "n_layers": 3, "d_state": 96},
                       "austen": {"d_model": 128, "n_layers": 3, "d_state": 128}},
             "max_streams": None, "max_eval_windows": None},
    "quick": {"steps": 1000, "seq_len": 64, "batch_size": 32, "stream_windows": 16, "limit_val_batches": 16,
              "model": {"ecoli": {"d_model": 64, "n_layers": 2, "d_state": 64},
                        "austen": {"d_model": 64, "n_layers": 2, "d_state": 64}},
              "max_streams": None, "max_eval_windows": None},
    # for tests: a few steps of a tiny model, a few held-out streams
    "toy": {"steps": 4, "seq_len": 16, "batch_size": 4, "stream_windows": 4, "limit_val_batches": 2,
            "model": {"ecoli": {"d_model": 16, "n_layers": 1, "d_state": 8},
                      "austen": {"d_model": 16, "n_layers": 1, "d_state": 8}},
            "max_streams": 8, "max_eval_windows": 8},
}

FINAL_LINE = re.compile(r"^final (?P<metric>\S+)=(?P<value>\S+) at step (?P<step>\d+) \(run dir (?P<run_dir>.+)\)$")


# ------------------------------------------------------------------------------------- training


def fit_overrides(corpus: str, arm: str, preset: dict, data_root: Path, runs_dir: Path,
                  cache_dir: str = "", seed: int = 0) -> list[str]:
    """The dotted overrides of one training run: identical for both arms but for model.carry_state."""
    c, steps = CORPORA[corpus], preset["steps"]
    model = preset["model"][corpus]
    o = [
        f"data.path={data_root / c['data']}", "data.window_sampling=contiguous",
        f"data.seq_len={preset['seq_len']}", f"data.batch_size={preset['batch_size']}", *c["extra"],
        *(f"model.{k}={v}" for k, v in model.items()), f"model.carry_state={str(arm == 'carried').lower()}",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
        f"trainer.limit_val_batches={preset['limit_val_batches']}", "trainer.enable_progress_bar=false",
        f"checkpoint.every_n_steps={steps}", "checkpoint.resume=none", "logger.mode=disabled",
        f"runs_dir={runs_dir}", f"name={corpus}_{arm}", f"seed={seed}",
    ]
    if cache_dir:
        o.append(f"data.cache_dir={cache_dir}")
    return o


def fit_command(corpus: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "ssm_train", "fit", "-c", CORPORA[corpus]["config"], *overrides]


def run_fits(jobs: list[dict], parallel: int, log_dir: Path) -> dict[str, dict]:
    """Run the ``ssm-train fit`` jobs ({name, cmd}), at most ``parallel`` at a time, one thread each.

    Returns name -> {wall_s, final line fields, log}; a failed run raises with its log's tail."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "WANDB_MODE": "disabled"}
    pending, running, done = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            log = log_dir / f"{job['name']}.log"
            fh = open(log, "w")
            proc = subprocess.Popen(job["cmd"], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
            running[job["name"]] = (proc, fh, log, time.perf_counter())
            print(f"[train] started {job['name']} (log {log})", flush=True)
        time.sleep(0.5)
        for name, (proc, fh, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            fh.close()
            wall = time.perf_counter() - t0
            del running[name]
            text = log.read_text()
            if proc.returncode != 0:
                for other, (p, f, _, _) in running.items():  # stop what this run started alongside
                    p.kill()
                    p.wait()
                    f.close()
                raise RuntimeError(f"training {name} failed (exit {proc.returncode}); tail of {log}:\n{text[-3000:]}")
            final = [m for line in text.splitlines() if (m := FINAL_LINE.match(line.strip()))]
            if not final:
                raise RuntimeError(f"training {name}: no final line in {log}")
            m = final[-1]
            done[name] = {"wall_s": wall, "final_line": m.group(0), "metric": m["metric"],
                          "value": float(m["value"]), "step": int(m["step"]), "run_dir": m["run_dir"],
                          "log": str(log)}
            print(f"[train] {name}: {m.group(0)} in {wall:.0f} s", flush=True)
    return done


# ----------------------------------------------------------------------------------- evaluation


def load_model(ckpt: str | Path):
    """(Backbone in eval mode, config dict, spec dict) of a checkpoint, by the project's loader."""
    from ssm_train.generate import load_backbone

    return load_backbone(ckpt)


def heldout_module(config: dict, n_sections: int):
    """The run's data module with its held-out split cut into ``n_sections`` contiguous streams."""
    from ssm_train.config import from_dict
    from ssm_train.data.kinds import build_datamodule

    cfg = from_dict(config)
    data = dataclasses.replace(cfg.data, batch_size=int(n_sections), window_sampling="contiguous", num_workers=0)
    return build_datamodule(data, cfg.seed, rank=0, world_size=1)


def heldout_tokens(config: dict) -> int:
    """Tokens in the run's held-out stream (inputs and targets, all documents or records)."""
    return int(heldout_module(config, 1).val_stream.n_tokens)


def heldout_batches(config: dict, n_sections: int, max_windows: int | None = None) -> list[dict]:
    """The first ``max_windows`` (default all) validation batches of ``n_sections`` streams:
    batch k holds window k of every stream ({inputs, targets, resets, offset}, [n_sections, L])."""
    out = []
    for k, batch in enumerate(heldout_module(config, n_sections).val_dataloader()):
        if max_windows is not None and k >= max_windows:
            break
        out.append({key: batch[key] for key in ("inputs", "targets", "resets", "offset")})
    return out


@torch.no_grad()
def stream_bits(model, batches: list[dict], mode: str, ignore_index: int = -100) -> np.ndarray:
    """Per-token loss in bits, [S, n_windows × L], of ``model`` read window by window in ``mode``
    (reset | carried | warm1, see the module docstring); ignored targets are NaN. Document resets
    (the batches' ``resets``) apply in every mode."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    state, previous, out = None, None, []
    for b in batches:
        x, y, r = b["inputs"], b["targets"], b["resets"]
        if mode == "carried":
            logits, state = model(x, resets=r, state=state, return_state=True)
        elif mode == "reset":
            logits = model(x, resets=r)
        else:
            warm = None if previous is None else model(previous[0], resets=previous[1], return_state=True)[1]
            logits = model(x, resets=r, state=warm)
            previous = (x, r)
        out.append(token_bits(logits, y, ignore_index))
    return np.concatenate(out, axis=1)


@torch.no_grad()
def concatenated_bits(model, batches: list[dict], ignore_index: int = -100) -> np.ndarray:
    """The same streams as one forward over their concatenation (windows joined along time, with
    their resets): what ``stream_bits(..., "carried")`` must equal."""
    x = torch.cat([b["inputs"] for b in batches], 1)
    r = torch.cat([b["resets"] for b in batches], 1)
    y = torch.cat([b["targets"] for b in batches], 1)
    return token_bits(model(x, resets=r), y, ignore_index)


def token_bits(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> np.ndarray:
    loss = F.cross_entropy(logits.flatten(0, 1).double(), targets.flatten(), reduction="none",
                           ignore_index=ignore_index).view(targets.shape) / math.log(2)
    return loss.masked_fill(targets == ignore_index, float("nan")).numpy()


def stream_resets(batches: list[dict]) -> np.ndarray:
    """[S, n_windows × L] bool: where the state is zeroed (documents, stream starts)."""
    r = torch.cat([b["resets"] for b in batches], 1).numpy().copy()
    r[:, 0] = True  # a stream starts from the zero state in every mode
    return r


def since_reset(resets: np.ndarray) -> np.ndarray:
    """Per position: inputs the model has seen since the last state reset, before this one
    (0 at a reset, i.e. the first input of a document or stream)."""
    T = resets.shape[1]
    t = np.broadcast_to(np.arange(T), resets.shape)
    last = np.maximum.accumulate(np.where(resets, t, 0), axis=1)
    return t - last


def pow2_edges(n: int) -> list[int]:
    """0, 1, 2, 4, ... up to n (bucket edges for positions 0..n-1)."""
    edges, e = [0], 1
    while e < n:
        edges.append(e)
        e *= 2
    return edges + [n]


def bucket_label(lo: int, hi: int, unit: int = 1) -> str:
    """``lo``..``hi - 1`` inclusive; with ``unit`` > 1 the half-open range in units: [1, 2)."""
    if unit > 1:
        return f"[{lo // unit}, {hi // unit})"
    return f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}"


def bucket_means(bits: np.ndarray, key: np.ndarray, edges: list[int]) -> tuple[list[float], list[int]]:
    """Mean bits of the tokens with edges[i] <= key < edges[i+1], and their counts."""
    means, counts = [], []
    ok = ~np.isnan(bits)
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = ok & (key >= lo) & (key < hi)
        counts.append(int(sel.sum()))
        means.append(float(bits[sel].mean()) if sel.any() else float("nan"))
    return means, counts


def position_analysis(bits: dict[str, dict[str, np.ndarray]], resets: np.ndarray, seq_len: int) -> dict:
    """Bucket every (arm, mode)'s per-token bits [S, K·L] by position within the window, window
    index since the stream start, and tokens since the last reset (edges in units of seq_len).

    Position within the window is taken over windows 1..K-1 only: window 0 starts the stream from
    the zero state in every mode, and would put a stream start into every position-0 bucket."""
    S, T = resets.shape
    K = T // seq_len
    first = 1 if K > 1 else 0  # the first window that position-within-window statistics count
    t = np.broadcast_to(np.arange(T), (S, T))
    c = since_reset(resets)
    within_edges = pow2_edges(seq_len)
    window_edges = pow2_edges(K)
    reset_edges = [0] + [seq_len * e for e in pow2_edges(K)[1:]]
    fine_edges = sorted({0, *np.unique(np.geomspace(1, T, 40).astype(int)).tolist(), T})  # for the figure
    out: dict[str, Any] = {
        "n_streams": S, "stream_windows": K, "seq_len": seq_len,
        "within_window": {"edges": within_edges, "windows": [first, K - 1],
                          "labels": [bucket_label(a, b) for a, b in zip(within_edges[:-1], within_edges[1:])]},
        "window_index": {"edges": window_edges, "labels": [bucket_label(a, b) for a, b in
                                                          zip(window_edges[:-1], window_edges[1:])]},
        "since_reset": {"edges": reset_edges, "labels": [bucket_label(a, b, seq_len) for a, b in
                                                         zip(reset_edges[:-1], reset_edges[1:])],
                        "fine_edges": fine_edges},
        "mean_bpt": {}, "per_position": {}, "per_window": {},
    }
    for key in ("within_window", "window_index", "since_reset"):
        out[key]["bpt"] = {}
    out["since_reset"]["fine_bpt"] = {}
    for arm, modes in bits.items():
        for name in ("mean_bpt", "per_position", "per_window"):
            out[name][arm] = {}
        for key in ("within_window", "window_index", "since_reset"):
            out[key]["bpt"][arm] = {}
        out["since_reset"]["fine_bpt"][arm] = {}
        for mode, b in modes.items():
            out["mean_bpt"][arm][mode] = float(np.nanmean(b))
            per_pos = b.reshape(S, K, seq_len)
            out["per_position"][arm][mode] = np.nanmean(per_pos[:, first:], axis=(0, 1)).tolist()
            out["per_window"][arm][mode] = np.nanmean(per_pos, axis=(0, 2)).tolist()
            for key, sel, k, edges in (("within_window", slice(first * seq_len, None), t % seq_len, within_edges),
                                       ("window_index", slice(None), t // seq_len, window_edges),
                                       ("since_reset", slice(None), c, reset_edges)):
                means, counts = bucket_means(b[:, sel], k[:, sel], edges)
                out[key]["bpt"][arm][mode] = means
                out[key]["tokens"] = counts
            fine, fine_counts = bucket_means(b, c, fine_edges)
            out["since_reset"]["fine_bpt"][arm][mode] = fine
            out["since_reset"]["fine_tokens"] = fine_counts
    return out


def evaluate_corpus(ckpts: dict[str, str], preset: dict, threads: int = 1) -> dict:
    """(a) and (b) for the two arms' checkpoints of one corpus; the held-out streams are read once."""
    torch.set_num_threads(threads)
    models = {arm: load_model(path) for arm, path in ckpts.items()}
    config, spec = models[ARMS[0]][1], models[ARMS[0]][2]
    seq_len, B, K = preset["seq_len"], preset["batch_size"], preset["stream_windows"]
    ignore = spec.get("ignore_index", -100)
    n_tokens = heldout_tokens(config)
    t0 = time.perf_counter()

    # (a): the whole held-out split as the trainer's validation cuts it (B streams)
    full = heldout_batches(config, B, preset.get("max_eval_windows"))
    lim = preset["limit_val_batches"]
    heldout: dict[str, Any] = {"n_streams": B, "windows": len(full), "tokens": 0, "bpt": {},
                               "first_limit_val_batches_bpt": {}}
    for arm, (model, _, _) in models.items():
        heldout["bpt"][arm], heldout["first_limit_val_batches_bpt"][arm] = {}, {}
        for mode in MODES:
            b = stream_bits(model, full, mode, ignore)
            heldout["tokens"] = int(np.sum(~np.isnan(b)))
            heldout["bpt"][arm][mode] = float(np.nanmean(b))
            heldout["first_limit_val_batches_bpt"][arm][mode] = float(np.nanmean(b[:, :lim * seq_len]))

    # (b): as many streams of K windows as the held-out split holds
    S = n_tokens // (K * seq_len + 1)
    if preset.get("max_streams"):
        S = min(S, preset["max_streams"])
    if S < 1:
        raise ValueError(f"the held-out split ({n_tokens} tokens) holds no stream of {K} x {seq_len} tokens")
    streams = heldout_batches(config, S, K)
    resets = stream_resets(streams)
    bits = {arm: {mode: stream_bits(model, streams, mode, ignore) for mode in MODES}
            for arm, (model, _, _) in models.items()}
    position = position_analysis(bits, resets, seq_len)
    # end-to-end: carrying the state window by window is one forward over the whole stream
    check = {arm: float(np.nanmax(np.abs(bits[arm]["carried"] - concatenated_bits(model, streams, ignore))))
             for arm, (model, _, _) in models.items()}
    params = {arm: sum(p.numel() for p in model.parameters()) for arm, (model, _, _) in models.items()}
    return {"heldout_tokens": n_tokens, "heldout": heldout, "position": position,
            "check_carried_minus_concatenated_max_abs_bits": check, "params": params,
            "eval_wall_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------- report


def fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


COMBOS = [("reset", "reset"), ("reset", "carried"), ("carried", "reset"), ("carried", "carried"),
          ("carried", "warm1")]


def markdown(results: dict) -> str:
    lines = ["### Held-out bits per token (whole held-out split, cut into data.batch_size streams)", "",
             "| corpus | arm (training) | as trained | eval: reset each window | eval: carried | "
             "eval: warm-up of 1 window | trainer's val/bpt (first limit_val_batches windows) |",
             "|---|---|---|---|---|---|---|"]
    for corpus, r in results["corpora"].items():
        for arm in ARMS:
            h = r["heldout"]["bpt"][arm]
            lines.append(f"| {corpus} | {arm} | **{fmt(h[arm])}** | {fmt(h['reset'])} | {fmt(h['carried'])} | "
                         f"{fmt(h['warm1'])} | {r['train'][arm]['value']:.4f} |")
    K = results["settings"]["stream_windows"]
    head = "| corpus | {what} | tokens | " + " | ".join(f"{a} arm / {MODE_NAMES[m]}" for a, m in COMBOS) + " |"
    rule = "|---|---|---|" + "---|" * len(COMBOS)
    for key, title, what in (
            ("within_window", f"by position within the window (0 = a window's first target; windows 1-{K - 1} "
                              "of each stream, i.e. not the stream's first)", "position"),
            ("window_index", "by window since the stream start (in units of seq_len)", "window"),
            ("since_reset", "by inputs since the last state reset (document or stream start), "
                            "in units of seq_len", "since reset (x seq_len)")):
        lines += ["", f"### Held-out bits per token {title}", "", head.format(what=what), rule]
        for corpus, r in results["corpora"].items():
            p = r["position"][key]
            for i, label in enumerate(p["labels"]):
                vals = " | ".join(fmt(p["bpt"][a][m][i]) for a, m in COMBOS)
                lines.append(f"| {corpus} | {label} | {p['tokens'][i]} | {vals} |")
    lines += ["", "### Mean over the position streams", "", "| corpus | streams x tokens | " +
              " | ".join(f"{a} arm / {MODE_NAMES[m]}" for a, m in COMBOS) + " |", "|---|---|" + "---|" * len(COMBOS)]
    for corpus, r in results["corpora"].items():
        p = r["position"]
        vals = " | ".join(fmt(p["mean_bpt"][a][m]) for a, m in COMBOS)
        lines.append(f"| {corpus} | {p['n_streams']} x {p['stream_windows'] * p['seq_len']} | {vals} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = list(results["corpora"])
    fig, axes = plt.subplots(len(corpora), 4, figsize=(20, 3.8 * len(corpora)), squeeze=False)
    style = {("reset", "reset"): ("tab:blue", "-"), ("reset", "carried"): ("tab:blue", ":"),
             ("carried", "reset"): ("tab:red", ":"), ("carried", "carried"): ("tab:red", "-"),
             ("carried", "warm1"): ("tab:orange", "--")}
    for row, corpus in zip(axes, corpora):
        p = results["corpora"][corpus]["position"]
        L, K = p["seq_len"], p["stream_windows"]
        edges = p["since_reset"]["fine_edges"]
        mids = [max(0.5, (a + b - 1) / 2) for a, b in zip(edges[:-1], edges[1:])]
        keep = [i for i, n in enumerate(p["since_reset"]["fine_tokens"]) if n >= min(100, p["n_streams"])]
        baseline = np.array(p["since_reset"]["fine_bpt"]["reset"]["reset"])
        for (arm, mode), (color, ls) in style.items():
            label = f"{arm} arm, eval {MODE_NAMES[mode]}"
            row[0].plot(range(L), p["per_position"][arm][mode], color=color, ls=ls, label=label)
            row[1].plot(range(K), p["per_window"][arm][mode], color=color, ls=ls, marker=".", label=label)
            fine = np.array(p["since_reset"]["fine_bpt"][arm][mode])
            row[2].plot([mids[i] for i in keep], fine[keep], color=color, ls=ls, label=label)
            if (arm, mode) != ("reset", "reset"):
                row[3].plot([mids[i] for i in keep], (baseline - fine)[keep], color=color, ls=ls, label=label)
        row[0].set(title=f"{corpus}: position within the window (windows 1-{K - 1})",
                   xlabel="position (0 = first target)",
                   ylabel="held-out bits per token")
        row[1].set(title=f"{corpus}: window since the stream start", xlabel=f"window index (x {L} tokens)",
                   ylabel="held-out bits per token")
        row[2].set(title=f"{corpus}: inputs since the last state reset", xscale="log",
                   xlabel="inputs since the document or stream start", ylabel="held-out bits per token")
        row[3].set(title=f"{corpus}: bits saved against the reset arm reset each window", xscale="log",
                   xlabel="inputs since the document or stream start", ylabel="bits per token saved")
        row[3].axhline(0, color="black", lw=0.6)
        for ax in row[2:]:
            ax.axvline(L, color="gray", lw=0.8)
            ax.text(L, ax.get_ylim()[1], " seq_len", va="top", fontsize=8, color="gray")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- main


def machine() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "loadavg": load}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small models, 1000 steps")
    size.add_argument("--toy", action="store_true", help="a tiny run for tests (seconds)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "carried_state", help="output folder")
    p.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data",
                   help="folder holding genomics/ and text/ (default ../shared/data)")
    p.add_argument("--cache-dir", default="", help="data.cache_dir for the runs ('' = the library's default)")
    p.add_argument("--jobs", type=int, default=2, help="training runs at a time (one thread each)")
    p.add_argument("--steps", type=int, help="override the preset's number of training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-only", action="store_true",
                   help="reuse OUT/runs/*/checkpoints/last.ckpt and OUT/train.json instead of training")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    preset_name = "toy" if args.toy else "quick" if args.quick else "full"
    preset = dict(PRESETS[preset_name])
    if args.steps:
        preset["steps"] = args.steps
    out = args.out.resolve()
    runs_dir = out / "runs"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    before = machine()
    jobs = []
    for corpus in args.corpora:
        for arm in ARMS:
            overrides = fit_overrides(corpus, arm, preset, args.data_root.resolve(), runs_dir, args.cache_dir,
                                      args.seed)
            jobs.append({"name": f"{corpus}_{arm}", "corpus": corpus, "arm": arm,
                         "cmd": fit_command(corpus, overrides), "overrides": overrides})
    train_json = out / "train.json"
    if args.eval_only:
        trained = json.loads(train_json.read_text())
    else:
        for job in jobs:
            shutil.rmtree(runs_dir / job["name"], ignore_errors=True)
        trained = run_fits(jobs, args.jobs, out / "logs")
        train_json.write_text(json.dumps(trained, indent=1))
    train_wall = time.perf_counter() - t0

    results: dict[str, Any] = {
        "preset": preset_name, "settings": {k: v for k, v in preset.items()}, "seed": args.seed,
        "tokens_per_arm": preset["steps"] * preset["batch_size"] * preset["seq_len"],
        "machine": before, "commands": {j["name"]: " ".join(j["cmd"][1:]) for j in jobs}, "corpora": {},
    }
    for corpus in args.corpora:
        ckpts = {arm: str(Path(trained[f"{corpus}_{arm}"]["run_dir"]) / "checkpoints" / "last.ckpt") for arm in ARMS}
        print(f"[eval] {corpus}", flush=True)
        r = evaluate_corpus(ckpts, preset)
        r["train"] = {arm: trained[f"{corpus}_{arm}"] for arm in ARMS}
        r["unit"] = CORPORA[corpus]["unit"]
        results["corpora"][corpus] = r
    results["wall_s"] = {"train": train_wall, "total": time.perf_counter() - t0}
    results["machine_after"] = machine()
    (out / "carried_state.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "carried_state.png")
    print(markdown(results))
    for corpus, r in results["corpora"].items():
        check = ", ".join(f"{arm} {v:.2e}" for arm, v in r["check_carried_minus_concatenated_max_abs_bits"].items())
        lib = ", ".join(f"{arm} {r['heldout']['first_limit_val_batches_bpt'][arm][arm]:.4f} (trainer "
                        f"{r['train'][arm]['value']:.4f})" for arm in ARMS)
        print(f"\n{corpus}: carried window by window vs one forward over the stream, max |diff| bits: {check}; "
              f"recomputed val/bpt on the trainer's windows: {lib}; params {r['params']}")
    print(f"\ntraining {results['wall_s']['train']:.0f} s, total {results['wall_s']['total']:.0f} s "
          f"(preset {preset_name}, {results['tokens_per_arm']} training tokens per arm); "
          f"wrote {out / 'carried_state.json'} and {out / 'carried_state.png'}")
    return results


if __name__ == "__main__":
    main()
