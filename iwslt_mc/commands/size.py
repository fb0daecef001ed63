"""``iwslt-mc size``: exact storage size, logical parameters and bin of a model directory."""

from __future__ import annotations

from ..cli import add_command

EXAMPLES = """
  iwslt-mc size path/to/model                     # size, parameters, bin, component table
  iwslt-mc size path/to/model --json              # the same for scripts
  iwslt-mc size path/to/model --edition 2026      # 2026 has no bins: size and parameters only
  iwslt-mc size path/to/model.safetensors         # one file instead of a directory
"""


def add_parser(sub):
    p = add_command(
        sub, "size",
        help="exact storage size, parameter count and size bin of a model",
        description=("Read the safetensors headers of a model directory (never the tensor data, never pickle files) "
                     "and report the storage size S (total bytes of the weight files, decimal units), the logical "
                     "parameter count (bitsandbytes 4-bit/8-bit weights counted by the shape they stand for), a "
                     "breakdown by component and dtype, and the size bin of the edition."),
        examples=EXAMPLES,
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory (or a single .safetensors file)")
    p.add_argument("--edition", default="2025", help="track edition whose bins apply (default: 2025)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def run(args) -> int:
    from .. import sizer
    from ..output import print_json, print_table, warn
    from ..track import format_size

    rep = sizer.measure(args.model_dir, edition=args.edition)
    if args.json:
        print_json(rep.to_json())
        for w in rep.warnings:
            warn(w)
        return 0
    rows = []
    for comp, v in rep.components.items():
        share = 100.0 * v["bytes"] / rep.bytes if rep.bytes else 0.0
        rows.append([comp, f"{v['params']:,}", f"{v['bytes']:,}", f"{share:.1f}%"])
    rows.append(["total (weight files)", f"{rep.params:,}", f"{rep.bytes:,}", "100.0%"])
    print_table(rows, ["component", "parameters", "bytes", "share"], title=f"{rep.model_dir}")
    drows = [[d, f"{v['tensors']:,}", f"{v['elements']:,}", f"{v['bytes']:,}"] for d, v in rep.dtypes.items()]
    print_table(drows, ["dtype", "tensors", "stored elements", "bytes"])
    print(f"storage size:  {rep.bytes:,} bytes ({format_size(rep.bytes)}, {format_size(rep.bytes, 'MB')})")
    print(f"parameters:    {rep.params:,}")
    if rep.overhead:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(rep.quantized.items()))
        print(f"quant state:   {rep.overhead:,} bytes (not parameters; {kinds})")
    print(f"bin:           {sizer.bin_explanation(rep.bytes, rep.edition)}")
    print(f"signature:     {rep.signature}")
    for w in rep.warnings:
        warn(w)
    return 0
