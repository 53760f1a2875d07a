"""The checker's report: what each check found, as a table for people and a dict for
JSON (:class:`CheckReport`), and one op's layer-by-layer result (:class:`LayerResult`).

Its own module so that :mod:`tfqnet.micro.checker` holds the checks themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tfqnet.micro.arena_model import KERNEL_SETS


@dataclass
class LayerResult:
    index: int
    op: str
    version: int
    layer: str
    tensor: int
    type: str
    max_diff: float | None = None  # over all samples, LSB (float: absolute)
    isolated_max_diff: float | None = None  # on samples whose inputs agreed
    isolated_samples: int = 0
    status: str = "not run"  # exact | known rounding | propagated | FAIL | not run


@dataclass
class CheckReport:
    model_bytes: int
    flash_bytes: int = 0
    resolution_errors: list[str] = field(default_factory=list)
    arena_minimum: int | None = None  # TFLM reference kernels, 64-bit host: measured
    arena_reported: int | None = None
    # 32-bit Cortex-M, derived (tfqnet.micro.arena_model): kernel set -> minimum bytes
    arena_kernels: dict[str, int] = field(default_factory=dict)
    arena_not_derived: str = ""  # why a kernel set has no figure, when one has none
    layers: list[LayerResult] = field(default_factory=list)
    layer_check: str = "not run"  # passed | failed | skipped: reason
    samples: int = 0
    output_top1_tflm_vs_tflite: float | None = None
    keras: dict | None = None
    resources: list[dict] = field(default_factory=list)
    total_macs: int = 0
    weight_bytes: int = 0
    flash: dict[str, int] = field(default_factory=dict)  # flash_breakdown of the model

    @property
    def failures(self) -> list[str]:
        found = list(self.resolution_errors)
        if self.layer_check.startswith("failed: "):
            found.append("layer by layer: " + self.layer_check[len("failed: "):])
        found += [f"layer {r.index} {r.op} ({r.layer}): TFLM differs from TFLite reference "
                  f"by {r.isolated_max_diff:g} LSB on identical inputs"
                  for r in self.layers if r.status == "FAIL"]
        if self.keras is not None and not self.keras.get("passed", False):
            found.append(f"Keras QAT model: {self.keras.get('reason', 'disagrees')}")
        return found

    @property
    def skipped(self) -> list[str]:
        """Checks that did not run on this model, with the reason (never a pass)."""
        if self.layer_check.startswith("skipped: "):
            return ["layer-by-layer skipped: " + self.layer_check[len("skipped: "):]]
        return []

    @property
    def passed(self) -> bool:  # no check failed; ``skipped`` lists those that did not run
        return not self.failures

    def verdict(self, strict: bool = False) -> str:
        """PASS, PASS (<what was skipped>) or FAIL (...); ``strict``: a skip fails."""
        if not self.passed:
            return f"FAIL ({len(self.failures)} problem(s))"
        if self.skipped:
            return ("FAIL (strict: " if strict else "PASS (") + "; ".join(self.skipped) + ")"
        return "PASS"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["passed"] = self.passed
        data["failures"] = self.failures
        data["skipped"] = self.skipped
        return data

    def format_table(self, strict: bool = False) -> str:
        out = [f"model: {self.model_bytes} bytes; flash (aligned): {self.flash_bytes} bytes"]
        if self.flash:
            out.append("flash by part: " + ", ".join(f"{part} {n}"
                                                     for part, n in self.flash.items()))
        if self.arena_minimum is not None:
            out.append(f"arena, TFLM reference kernels on this 64-bit host (measured): "
                       f"{self.arena_minimum} bytes minimum, {self.arena_reported} with margin")
        labels = {k.key: k.label for k in KERNEL_SETS}
        for key, size in self.arena_kernels.items():
            out.append(f"arena, {labels[key]} (derived): {size} bytes minimum")
        if self.arena_not_derived:
            out.append(f"arena on 32-bit Cortex-M: {self.arena_not_derived}")
        out.append("")
        out.append("1. TFLM resolution: " + ("ok" if not self.resolution_errors else "FAILED"))
        out += [f"   {e}" for e in self.resolution_errors]
        out.append(f"2. layer by layer, TFLM vs TFLite BUILTIN_REF ({self.samples} samples): "
                   f"{self.layer_check}")
        if self.layers:
            out.append(f"   {'#':>3} {'op':<20} {'layer':<22} {'type':<7} {'max':>6} "
                       f"{'isol.':>6}  status")
            for r in self.layers:
                out.append(f"   {r.index:>3} {r.op + ' v' + str(r.version):<20} {r.layer[:22]:<22}"
                           f" {r.type:<7} {_num(r.max_diff):>6} {_num(r.isolated_max_diff):>6}"
                           f"  {r.status}")
        if self.output_top1_tflm_vs_tflite is not None:
            out.append(f"   output top-1 agreement TFLM vs TFLite: "
                       f"{self.output_top1_tflm_vs_tflite:.3f}")
        if self.keras is not None:
            k = self.keras
            out.append("3. Keras QAT model: " + ("ok" if k.get("passed") else "FAILED")
                       + (f" (top-1 agreement {k['top1_agreement']:.3f}, max output diff "
                          f"{_num(k.get('max_output_diff_lsb'))} LSB)"
                          if k.get("top1_agreement") is not None else "")
                       + (f": {k['reason']}" if k.get("reason") else ""))
        else:
            out.append("3. Keras QAT model: not given")
        out.append(f"4. resources: {self.weight_bytes} weight bytes, {self.total_macs} MACs")
        if self.resources:
            out.append(f"   {'#':>3} {'op':<20} {'layer':<22} {'stored as':<9} {'bits':>4} "
                       f"{'values':>6} {'bytes':>8} {'params':>8} {'MACs':>10} "
                       f"{'bias etc.':>9}")
            for r in self.resources:
                out.append(f"   {r['index']:>3} {r['op']:<20} {r['layer'][:22]:<22} "
                           f"{(r['weight_type'] or '-'):<9} {_num(r['weight_bits']):>4} "
                           f"{_num(r.get('weight_values')):>6} {r['weight_bytes']:>8} "
                           f"{r['weight_params']:>8} {r['macs']:>10} "
                           f"{r['other_const_bytes']:>9}")
        out.append("")
        out.append(self.verdict(strict))
        return "\n".join(out)


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:g}"


