"""Gradients across lags: does a complex spectrum near the unit circle keep ∂loss/∂u_{t-k} from vanishing?

Model: the framework's Backbone (``ssm_train.tasks.base.build_backbone``, the model ``fit``
trains): a linear encoder of the scalar input, one pre-norm block (LayerNorm, diagonal linear
recurrence, residual; LayerNorm, GLU MLP, residual), a final LayerNorm, a linear head. Three arms
differ only in the recurrence x_t = Λ x_{t-1} + γ ⊙ B z_t, z_t = LayerNorm(encoder(u_t)):

    complex      kind=lru,  init=ring         λ = r e^{iθ}, θ ~ U[0, 2π], complex B and C
    real         kind=real, init=real         λ = r > 0, real B and C (the LRU paper's real arm)
    real_signed  kind=real, init=real_signed  λ = ±r, each sign with odds 1/2 (real B and C)

with the same radii, |λ|² ~ U[r_min², r_max²] on [0.9, 0.999] as in ``trained``, and for one seed
the *same draws* of r in every arm (each init draws the radii first, from the same generator
state): at init the arms differ in arg λ and in B, C, never in |λ|.

Task: copy at lag ℓ, y_t = u_{t-ℓ}, u white Gaussian (``data.kind=copy``, ``data.window=1``),
sequences of length 2ℓ, state size N = 2ℓ (``Setting.d_state``; ``trained`` needs N = 2ℓ for the
complex arm to reach an error of 0.01 at ℓ = 16).

1. Gradient across lags. On B_g = 64 held-out sequences of the training length L_g = 2ℓ, the
   squared error of the last position t = L_g - 1 alone, ℓ_t = (ŷ_t - u_{t-ℓ})², and for
   k = 0..L_g-1 (t stays inside what training has seen: further on the state, whose constant part
   still grows with t for |λ| near 1, leaves it, and a trained model's residual with it)

       G(k) = E_b |∂ℓ_t/∂u_{t-k}|        (the loss gradient that reaches the input k steps back)
       S(k) = E_b |∂ŷ_t/∂u_{t-k}|        (the model's sensitivity to that input)

   (d_input = 1: the norm over input channels is |·|; E_b the mean over the batch). The target is
   data: the gradient flows through the model, not through y_t = u_{t-ℓ}. As ∂ℓ_t/∂u_s =
   2 (ŷ_t - y_t) ∂ŷ_t/∂u_s, G is S weighted by the residual, which training drives to zero where
   it succeeds: S says whether the input k steps back is *seen*, G how much learning signal
   reaches it. One backward pass of Σ_b ℓ_t (of Σ_b ŷ_t for S) gives every sample and every k at
   once (samples do not interact); ``tests/reproduce/test_gradients.py`` checks it against
   central finite differences. Computed on a float64 copy of the model (|λ| ≥ 0.9 underflows
   nothing at these lags, 0.9^512 ≈ 4e-24, but float64 keeps that check tight and costs one pass).

   At init, G and S are medians over ``init_seeds`` draws of the model (no training needed), with
   two diagnostics of the recurrence's output y^mix_t at t: its constant part
   DC = |E_b y^mix_t| / √H and its fluctuation AC = (E_b |y^mix_t - E_b y^mix_t|² / H)^½; and a
   control, G_c, the same G with the recurrence's input centred, z_t ← z_t - E_{b,t} z_t. The
   LayerNorm of a scalar input's affine image has a large mean, E z ≠ 0 (most of |z|² at init);
   a mode passes a constant with gain γ/|1 - λ|, which for λ = r > 0 is √((1+r)/(1-r)) (45 at
   r = 0.999), for λ = -r is √((1-r)/(1+r)) ≈ 0, and for a complex λ is ≈ γ/|θ|, small: the
   positive real arm's output carries a large constant, which the LayerNorms downstream divide
   out, scaling every gradient down. G_c removes that and nothing else.

2. Steps to a relative error of 0.1: AdamW as the framework configures it (``param_groups``:
   recurrent parameters at lr × 0.5 without weight decay; betas (0.9, 0.98), weight decay 0.05;
   linear warm-up, then cosine to 0.1 lr; gradient norm clipped at 1), batches of 32 samples of
   the training stream (sample j of seed + data.seed_offset, as ``fit`` draws them). Every
   ``eval_every`` steps, on 64 held-out samples (indices from 10^9, never reached in training),

       err = sqrt(Σ_{b,t} |ŷ_t - y_t|² / Σ_{b,t} |y_t|²)      (the framework's ``rel_err``)

   and the first step with err ≤ 0.1 is reported (None, "-" in the table: not within the
   budget); then G and S of the trained model.

Why not ``ssm_train.run.fit``: the result needs the held-out error every few steps (the step at
which it crosses 0.1) and the model before and after training in memory, in float64; a plain loop
over the framework's Backbone, parameter groups, optimizer and schedule does both without
checkpoints. Deterministic by seed: torch.manual_seed(seed) before the model is built (fit's
seed_everything does the same, so the init is the one fit would train) and data that are a pure
function of (seed, sample index).

Finished runs are stored under ``<out>/gradients_runs/`` and reused when the command is repeated
with the same setting. Run time on two shared CPU cores, one thread: QUICK (ℓ = 8, 32, 128; one
trained seed, 400 steps) about 4 min; FULL (ℓ = 8 .. 256; two trained seeds, 1000 steps) 68 min,
two thirds of it at ℓ = 256 (N = 512, sequences of 512).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ssm_train.analysis.report import Result, log_xticks, median, pyplot, torch_threads

ARMS: dict[str, list[str]] = {
    "complex": ["model.kind=lru", "model.init.name=ring"],
    "real": ["model.kind=real", "model.init.name=real"],
    "real_signed": ["model.kind=real", "model.init.name=real_signed"],
}
HELD_OUT_START = 10**9  # first sample index of the held-out batch: beyond steps × batch of any run
GRAD_START = 2 * 10**9  # and of the batch the gradients are measured on (another draw)


@dataclass(frozen=True)
class Setting:
    """Sizes and budget of one reproduction (``QUICK`` fits in minutes on two CPU cores)."""

    lags: tuple[int, ...]
    seeds: tuple[int, ...]  # trained
    steps: int
    init_seeds: tuple[int, ...] = tuple(range(8))  # measured at init only (cheap)
    state_per_lag: int = 2  # N = state_per_lag × ℓ
    d_model: int = 32
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    eval_every: int = 10
    eval_samples: int = 64
    grad_samples: int = 64
    target_err: float = 0.1
    r_min: float = 0.9
    r_max: float = 0.999
    threads: int = 1  # models this small run fastest on one thread (and share a busy machine best)

    def seq_len(self, lag: int) -> int:
        return 2 * lag  # half of every sequence has a lagged input to copy

    def d_state(self, lag: int) -> int:
        return self.state_per_lag * lag

    def grad_len(self, lag: int) -> int:
        """L_g: the gradient is read at t = L_g - 1 (for every lag k < L_g), the last position of a
        training sequence: further on, the state leaves what training has seen."""
        return self.seq_len(lag)

    def overrides(self, arm: str, lag: int, seed: int) -> list[str]:
        return [
            *ARMS[arm], "data.kind=copy", "data.window=1", f"data.lag={lag}", f"data.seq_len={self.seq_len(lag)}",
            f"data.batch_size={self.batch_size}", f"model.d_state={self.d_state(lag)}", f"model.d_model={self.d_model}",
            "model.n_layers=1", "model.mlp=glu", f"model.init.r_min={self.r_min}", f"model.init.r_max={self.r_max}",
            f"optim.lr={self.lr}", f"optim.warmup_steps={self.warmup_steps}", f"trainer.max_steps={self.steps}",
            f"seed={seed}",
        ]

    def key(self, arm: str, lag: int, seed: int) -> dict:
        """What a stored run must match to be reused (not the lists of lags and seeds it is part of)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("lags", "seeds", "init_seeds", "threads")}
        d |= {"grad_len": self.grad_len(lag), "overrides": self.overrides(arm, lag, seed)}
        return json.loads(json.dumps(d))  # as it reads back from JSON (tuples become lists)


QUICK = Setting(lags=(8, 32, 128), seeds=(0,), steps=400, init_seeds=tuple(range(6)))
FULL = Setting(lags=(8, 16, 32, 64, 128, 256), seeds=(0, 1), steps=1000)


# ------------------------------------------------------------------------------------ pieces


def build(setting: Setting, arm: str, lag: int, seed: int):
    """(cfg, the framework's Backbone at init): seeded as fit seeds it."""
    import torch

    from ssm_train.config import load_config
    from ssm_train.data.synthetic import synthetic_spec
    from ssm_train.tasks.base import build_backbone, spec_to_dict

    cfg = load_config([], setting.overrides(arm, lag, seed))
    torch.manual_seed(cfg.seed)  # fit's seed_everything, before the task builds its model
    return cfg, build_backbone(cfg, spec_to_dict(synthetic_spec(cfg.data)))


def copy_batch(cfg, start: int, n: int, seq_len: int | None = None):
    """Samples start..start+n-1 of the run's copy stream: (u [n, L, 1], y [n, L, 1])."""
    import torch

    from ssm_train.data.synthetic import copy_sample

    data = cfg.data if seq_len is None else replace(cfg.data, seq_len=seq_len)
    seed = cfg.seed + cfg.data.seed_offset  # the stream SyntheticDataModule trains on
    batch = [copy_sample(data, seed, start + i) for i in range(n)]
    return torch.stack([b["inputs"] for b in batch]), torch.stack([b["targets"] for b in batch])


def input_gradients(model, u, lag: int, centre: bool = False):
    """(∂ℓ_t/∂u, ∂ŷ_t/∂u, y^mix_t) with t = L - 1 and ℓ_t = (ŷ_t - u_{t-lag})², in float64 on a
    copy of ``model``: the first two [B, L, d_input] in time order (entry s is the input k = t - s
    steps back), the last the recurrence's output at t, [B, d_model]. u: [B, L, d_input];
    d_output = 1. ``centre``: the recurrence's input z minus its mean over the batch and time
    (a constant: the gradient still flows through z)."""
    import torch

    m = copy.deepcopy(model).double().eval()
    block, seen = m.blocks[0], {}
    u = u.detach().double()
    if centre:
        with torch.no_grad():
            z_mean = block.norm1(m.encoder(u)).mean((0, 1))
        block.norm1.register_forward_hook(lambda _mod, _inp, z: z - z_mean)

    def keep(_mod, _inp, y) -> None:  # returns None: leaves the output alone
        seen["y"] = y[:, -1].detach()

    block.mixer.register_forward_hook(keep)
    u.requires_grad_(True)
    y_hat = m(u)[:, -1, 0]  # [B]
    target = u[:, -1 - lag, 0].detach()  # the label is data: no gradient through it
    g_loss, = torch.autograd.grad((y_hat - target).pow(2).sum(), u, retain_graph=True)
    g_out, = torch.autograd.grad(y_hat.sum(), u)
    return g_loss, g_out, seen["y"]


def by_lag(g):
    """[B, L, d] in time order -> [L]: entry k is E_b |g_{t-k}|, t = L - 1 (|·| over channels)."""
    return g.flip(1).norm(dim=-1).mean(0)


def lag_gradients(model, u, lag: int, centre: bool = False) -> dict:
    """{"G", "S": [L] curves over k (see the module docstring), "dc", "ac": of y^mix_t}."""
    g_loss, g_out, y = input_gradients(model, u, lag, centre)
    mean, H = y.mean(0), y.shape[-1]
    return {"G": by_lag(g_loss), "S": by_lag(g_out), "dc": float(mean.norm() / H**0.5),
            "ac": float((y - mean).pow(2).sum(-1).mean().sqrt() / H**0.5)}


def relative_error(model, u, y) -> float:
    """sqrt(Σ|ŷ - y|² / Σ|y|²) over the batch and every position."""
    import torch

    with torch.no_grad():
        return float(((model(u).double() - y.double()).pow(2).sum() / y.double().pow(2).sum()).sqrt())


def radius_quantiles(model) -> list[float]:
    """min, median, max of |λ| of the model's recurrence."""
    lam = next(iter(model.eigenvalues().values())).detach()
    return _short(np.quantile(lam.abs().double().numpy(), [0, 0.5, 1]))


def _short(x) -> list[float]:
    """4 significant digits: the curves over k are most of the JSON."""
    return [float(f"{float(v):.4g}") for v in x]


def run_name(arm: str, lag: int, seed: int) -> str:
    return f"{arm}-lag{lag}-s{seed}"


def measure_init(setting: Setting, arm: str, lag: int, seed: int) -> dict:
    """G, S at init (curves over k), G with the recurrence's input centred, DC and AC of y^mix_t."""
    cfg, model = build(setting, arm, lag, seed)
    u, _ = copy_batch(cfg, GRAD_START, setting.grad_samples, setting.grad_len(lag))
    m, c = lag_gradients(model, u, lag), lag_gradients(model, u, lag, centre=True)
    return {"arm": arm, "lag": lag, "seed": seed, "grad_at_lag": float(m["G"][lag]), "sens_at_lag": float(m["S"][lag]),
            "grad_at_lag_centred": float(c["G"][lag]), "dc": m["dc"], "ac": m["ac"], "dc_centred": c["dc"],
            "grad": _short(m["G"]), "sens": _short(m["S"]), "grad_centred": _short(c["G"])}


def train_one(setting: Setting, arm: str, lag: int, seed: int) -> dict:
    """One arm at one lag: G and S at init, training with the held-out error every ``eval_every``
    steps, G and S after training."""
    import torch

    from ssm_train.nn.params import param_groups
    from ssm_train.tasks.base import warmup_cosine

    t0 = time.perf_counter()
    cfg, model = build(setting, arm, lag, seed)
    u_grad, _ = copy_batch(cfg, GRAD_START, setting.grad_samples, setting.grad_len(lag))
    u_eval, y_eval = copy_batch(cfg, HELD_OUT_START, setting.eval_samples)
    init, r_init = lag_gradients(model, u_grad, lag), radius_quantiles(model)

    o = cfg.optim
    opt = torch.optim.AdamW(param_groups(model, lr=o.lr, weight_decay=o.weight_decay,
                                         recurrent_lr_factor=o.recurrent_lr_factor),
                            lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, o.warmup_steps, setting.steps, o.min_lr_ratio))
    curve, reached = [], None
    for step in range(setting.steps + 1):
        if step % setting.eval_every == 0 or step == setting.steps:
            err = relative_error(model, u_eval, y_eval)
            curve.append([step, float(f"{err:.4g}")])
            if reached is None and err <= setting.target_err:
                reached = step
        if step == setting.steps:
            break
        u, y = copy_batch(cfg, step * setting.batch_size, setting.batch_size)
        loss = torch.nn.functional.mse_loss(model(u), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{run_name(arm, lag, seed)}: non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        opt.step()
        sched.step()
    trained = lag_gradients(model, u_grad, lag)
    return {"arm": arm, "lag": lag, "seed": seed, "N": setting.d_state(lag), "seq_len": setting.seq_len(lag),
            "steps": setting.steps, "steps_to_target": reached, "final_rel_err": curve[-1][1],
            "grad_at_lag_init": float(init["G"][lag]), "grad_at_lag_trained": float(trained["G"][lag]),
            "sens_at_lag_init": float(init["S"][lag]), "sens_at_lag_trained": float(trained["S"][lag]),
            "dc_init": init["dc"], "ac_init": init["ac"], "dc_trained": trained["dc"], "ac_trained": trained["ac"],
            "radius_init": r_init, "radius_trained": radius_quantiles(model),
            "grad_init": _short(init["G"]), "grad_trained": _short(trained["G"]),
            "sens_init": _short(init["S"]), "sens_trained": _short(trained["S"]), "err_curve": curve,
            "runtime_s": round(time.perf_counter() - t0, 2), "setting": setting.key(arm, lag, seed)}


def run_all(setting: Setting, out: Path | None = None, progress=print) -> tuple[list[dict], list[dict]]:
    """(trained rows, init rows) for every (lag, seed, arm) of ``setting``. A trained run stored
    under ``out/gradients_runs`` with the same setting is read back instead of trained again."""
    with torch_threads(setting.threads):
        init = [measure_init(setting, arm, lag, seed)
                for lag in setting.lags for seed in setting.init_seeds for arm in ARMS]
        progress(f"measured {len(init)} initialisations")
        rows, combos = [], [(lag, seed, arm) for lag in setting.lags for seed in setting.seeds for arm in ARMS]
        for i, (lag, seed, arm) in enumerate(combos, 1):
            stored = None if out is None else out / "gradients_runs" / f"{run_name(arm, lag, seed)}.json"
            row = json.loads(stored.read_text()) if stored is not None and stored.is_file() else None
            if row is None or row.get("setting") != setting.key(arm, lag, seed):
                row = train_one(setting, arm, lag, seed)
                if stored is not None:
                    stored.parent.mkdir(parents=True, exist_ok=True)
                    stored.write_text(json.dumps(row))
            reached = row["steps_to_target"]
            progress(f"trained {i}/{len(combos)} {run_name(arm, lag, seed)}: rel_err {row['final_rel_err']:.3f}, "
                     f"steps to {setting.target_err}: {'-' if reached is None else reached}, G(ℓ) "
                     f"{row['grad_at_lag_init']:.2e} -> {row['grad_at_lag_trained']:.2e} ({row['runtime_s']:.1f} s)")
            rows.append(row)
    return rows, init


# ----------------------------------------------------------------------- ssm-train reproduce gradients


def med(rows: list[dict], arm: str, lag: int, key: str) -> float:
    return median([r[key] for r in rows if r["arm"] == arm and r["lag"] == lag])


def steps_to_target(rows: list[dict], arm: str, lag: int) -> float | None:
    """Median over seeds of the step at which err ≤ target, a run that never got there counting as
    infinitely many: None when half of the runs or more did not get there."""
    steps = [r["steps_to_target"] for r in rows if r["arm"] == arm and r["lag"] == lag]
    value = median([float("inf") if s is None else s for s in steps])
    return None if not np.isfinite(value) else value


def steps_cell(rows: list[dict], arm: str, lag: int) -> str:
    """The median step, "-" when no run got there, and which ones did when only some did."""
    s = steps_to_target(rows, arm, lag)
    steps = [r["steps_to_target"] for r in rows if r["arm"] == arm and r["lag"] == lag]
    hits = [str(x) for x in steps if x is not None]
    if s is not None or not hits:
        return "-" if s is None else f"{s:.0f}"
    return f"- ({len(hits)}/{len(steps)} seeds: {', '.join(hits)})"


def reproduce(quick: bool, out: Path) -> Result:
    setting = QUICK if quick else FULL
    rows, init = run_all(setting, out, progress=lambda s: print(s, flush=True))
    meta = {"setting": asdict(setting), "arms": ARMS, "grad_len": {lag: setting.grad_len(lag) for lag in setting.lags},
            "train_runtime_s": round(sum(r["runtime_s"] for r in rows), 1),
            "measure": "k-th entry of grad*/sens*: mean_b |d l_t/d u_{t-k}| and mean_b |d yhat_t/d u_{t-k}|, "
                       "l_t = (yhat_t - u_{t-lag})^2, t = grad_len[lag] - 1, float64; *_centred: the recurrence's "
                       "input minus its mean"}
    top = max(setting.lags)
    md = [f"Copy y_t = u_{{t-ℓ}}; sequences of 2ℓ, state N = {setting.state_per_lag}ℓ, "
          f"d_model {setting.d_model}, "
          f"1 layer, radii |λ| ∈ [{setting.r_min}, {setting.r_max}] in every arm (the same draws per seed). "
          f"G = E|∂ℓ_t/∂u_{{t-ℓ}}| with the loss of the last position only, t = 2ℓ - 1 (float64); "
          f"S = E|∂ŷ_t/∂u_{{t-ℓ}}|. *Init* columns: median over {len(setting.init_seeds)} initialisations; "
          f"G_c: the recurrence's input centred (its mean removed); DC / AC: the constant / fluctuating part of the "
          f"recurrence's output (RMS per channel). *Trained*: {setting.steps} steps of batch {setting.batch_size}, "
          f"median over seeds {list(setting.seeds)}; steps until the held-out relative error ≤ {setting.target_err} "
          f"(`-`: not within {setting.steps}); final held-out error.", "",
          "| arm | ℓ | G init | G_c init | DC / AC init | G trained | S init | S trained "
          f"| steps to {setting.target_err} | final error |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        for lag in setting.lags:
            md.append(f"| {arm} | {lag} | {med(init, arm, lag, 'grad_at_lag'):.2e} | "
                      f"{med(init, arm, lag, 'grad_at_lag_centred'):.2e} | "
                      f"{med(init, arm, lag, 'dc'):.2f} / {med(init, arm, lag, 'ac'):.2f} | "
                      f"{med(rows, arm, lag, 'grad_at_lag_trained'):.2e} | {med(init, arm, lag, 'sens_at_lag'):.2e} | "
                      f"{med(rows, arm, lag, 'sens_at_lag_trained'):.2e} | {steps_cell(rows, arm, lag)} | "
                      f"{med(rows, arm, lag, 'final_rel_err'):.3f} |")
    md += ["", f"Decay of the init gradient with the lag, median G(k) over the initialisations of the ℓ = {top} "
               "models, and the ratio complex / arm:", "",
           "| k | " + " | ".join(ARMS) + " | complex / real | complex / real_signed |", "|---" * (len(ARMS) + 3) + "|"]
    curves = {arm: np.median([r["grad"] for r in init if r["arm"] == arm and r["lag"] == top], 0) for arm in ARMS}
    for k in [k for k in (1, 8, 16, 32, 64, 128, 256, 511) if k < setting.grad_len(top)]:
        ratios = [curves["complex"][k] / curves[a][k] for a in ("real", "real_signed")]
        md.append(f"| {k} | " + " | ".join(f"{curves[a][k]:.2e}" for a in ARMS) +
                  "".join(f" | {x:.1f}" for x in ratios) + " |")
    return {"meta": meta, "rows": rows, "init_rows": init}, lambda p: plot(rows, init, setting, p), "\n".join(md)


def plot(rows: list[dict], init: list[dict], setting: Setting, path: Path) -> None:
    """(a) G at the task's lag against ℓ, init and trained; (b) G(k) over every k, ℓ = max;
    (c) G(k) at init as built and with the recurrence's input centred; (d) steps to the target."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.2))
    (a, b), (c, d) = axes
    lags, top = list(setting.lags), max(setting.lags)
    for i, arm in enumerate(ARMS):
        color = f"C{i}"
        a.plot(lags, [med(init, arm, lag, "grad_at_lag") for lag in lags], "--o", ms=4, mfc="none", color=color,
               label=f"{arm}, init")
        a.plot(lags, [med(rows, arm, lag, "grad_at_lag_trained") for lag in lags], "-s", ms=4, color=color,
               label=f"{arm}, trained")

        def curve(source: list[dict], key: str) -> np.ndarray:
            return np.median([r[key] for r in source if r["arm"] == arm and r["lag"] == top], 0)

        k = np.arange(setting.grad_len(top))
        b.plot(k, curve(init, "grad"), "--", lw=0.8, color=color, label=f"{arm}, init")
        b.plot(k, curve(rows, "grad_trained"), "-", lw=1, color=color, label=f"{arm}, trained")
        c.plot(k, curve(init, "grad"), "--", lw=0.8, color=color, label=f"{arm}, as built")
        c.plot(k, curve(init, "grad_centred"), ":", lw=1.2, color=color, label=f"{arm}, input centred")
        steps = [steps_to_target(rows, arm, lag) for lag in lags]
        hit = [(lag, s) for lag, s in zip(lags, steps) if s is not None]
        miss = [lag for lag, s in zip(lags, steps) if s is None]
        if hit:
            d.plot([h[0] for h in hit], [h[1] for h in hit], "-o", ms=4, color=color, label=arm)
        if miss:  # just above the budget, one row per arm so that crosses do not hide each other
            d.plot(miss, [setting.steps * (1.02 + 0.03 * i)] * len(miss), "x", ms=7, color=color,
                   label=f"{arm}: not reached")
    a.set(xscale="log", yscale="log", xlabel="lag ℓ of the task (k = ℓ)", ylabel="E|∂ℓ_t/∂u_{t-ℓ}|",
          title="(a) loss gradient at the task's lag")
    b.axvline(top, color="k", ls=":", lw=0.8)
    b.set(yscale="log", xlabel="lag k", ylabel="E|∂ℓ_t/∂u_{t-k}|", title=f"(b) every lag, models of ℓ = {top}")
    c.set(yscale="log", xlabel="lag k", ylabel="E|∂ℓ_t/∂u_{t-k}|",
          title=f"(c) init, ℓ = {top}: input centred or not")
    d.axhline(setting.steps, color="k", ls=":", lw=0.8)
    d.set(xscale="log", xlabel="lag ℓ", ylabel=f"steps to relative error {setting.target_err}",
          title=f"(d) training steps (×: not within {setting.steps})", ylim=(0, setting.steps * 1.15))
    for ax in a, d:
        log_xticks(ax, lags)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
