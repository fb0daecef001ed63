"""``iwslt-mc size``: exact storage size (safetensors bytes and the organizers' torch.save bytes),
logical parameters and, in editions with bins, the size bin of a model directory."""

from __future__ import annotations

from ..cli import add_command

EXAMPLES = """
  iwslt-mc size path/to/model                     # both size measures, parameters, component table
  iwslt-mc size path/to/model --json              # the same for scripts
  iwslt-mc size path/to/model --edition 2025      # 2025: the size bin (safetensors bytes, decimal units)
  iwslt-mc size path/to/model --torch-save stream # measure torch.save by loading the model (needs torch)
  iwslt-mc size path/to/model.safetensors         # one file instead of a directory
"""

TORCH_SAVE_MODES = ("auto", "metadata", "stream", "off")


def add_parser(sub):
    p = add_command(
        sub, "size",
        help="exact storage size (safetensors and torch.save bytes), parameter count and size bin of a model",
        description=("Read the safetensors headers of a model directory (never the tensor data, never pickle files) "
                     "and report two size measures, each in bytes, GB (10^9) and GiB (2^30) with a signature: the "
                     "safetensors bytes (total bytes of the weight files; the 2025 storage size) and the organizers' "
                     "2027 measure, the bytes of torch.save(model.state_dict()) of the model loaded with transformers "
                     "(computed exactly from the same headers and config.json, no torch needed). Also the logical "
                     "parameter count (bitsandbytes 4-bit/8-bit weights counted by the shape they stand for), a "
                     "breakdown by component and dtype, and, for an edition with bins (2025), the size bin."),
        examples=EXAMPLES,
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory (or a single .safetensors file)")
    p.add_argument("--edition", default=None,
                   help="track edition: 2025 (bins), 2026 or 2027 (Pareto ranking, no bins); default: the newest")
    p.add_argument("--torch-save", choices=TORCH_SAVE_MODES, default="auto",
                   help=("how to get the torch.save measure: metadata (exact, from the headers; instant), stream "
                         "(load the model with transformers and count a real torch.save written to a pipe: needs "
                         "torch, one copy of the model in memory), auto (metadata; stream when metadata cannot be "
                         "exact and the edition ranks by torch.save), off"))
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def run(args) -> int:
    from .. import __version__
    from ..sizing import sizer, torchsave
    from ..output import info, print_json, print_table, warn
    from ..sizing.track import GB, GiB, get_edition

    ed = get_edition(args.edition)
    rep = sizer.measure(args.model_dir, edition=ed.key, torch_save=args.torch_save != "off")
    if args.torch_save == "stream" or (args.torch_save == "auto" and rep.torch_save is None and rep.torch_save_note
                                       and "torch_save_bytes" in ed.size_measures):
        if rep.torch_save_note:
            info(f"torch.save measure {rep.torch_save_note}")
        info("measuring torch.save by loading the model with transformers (one copy in memory) ...")
        rep.torch_save = torchsave.measure_streamed(rep.model_dir, version=f"iwslt-mc-{__version__}")
        rep.torch_save_note = None
    if args.json:
        print_json({**rep.to_json(), "edition_size_measures": list(ed.size_measures), "ranking": ed.ranking})
        for w in rep.warnings:
            warn(w)
        return 0

    def both(n: int) -> str:
        return f"{n:,} bytes ({n / GB:.3f} GB, {n / GiB:.3f} GiB)"

    rows = []
    for comp, v in rep.components.items():
        share = 100.0 * v["bytes"] / rep.bytes if rep.bytes else 0.0
        rows.append([comp, f"{v['params']:,}", f"{v['bytes']:,}", f"{share:.1f}%"])
    rows.append(["total (weight files)", f"{rep.params:,}", f"{rep.bytes:,}", "100.0%"])
    print_table(rows, ["component", "parameters", "bytes", "share"], title=f"{rep.model_dir}")
    drows = [[d, f"{v['tensors']:,}", f"{v['elements']:,}", f"{v['bytes']:,}"] for d, v in rep.dtypes.items()]
    print_table(drows, ["dtype", "tensors", "stored elements", "bytes"])
    print(f"safetensors:   {both(rep.bytes)}")
    print(f"  signature:   {rep.signature}")
    ts = rep.torch_save
    if ts is not None:
        where = ("model on one GPU, as the organizers load it" if ts.method == "metadata"
                 else "measured")
        cpu = f"; {ts.bytes_cpu:,} loaded on a CPU" if ts.method == "metadata" and ts.bytes_cpu != ts.bytes else ""
        print(f"torch.save:    {both(ts.bytes)} ({where}{cpu})")
        print(f"  signature:   {ts.signature}")
    elif args.torch_save != "off":
        print(f"torch.save:    {rep.torch_save_note} (--torch-save stream measures it)")
    print(f"parameters:    {rep.params:,}")
    if rep.overhead:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(rep.quantized.items()))
        print(f"quant state:   {rep.overhead:,} bytes (not parameters; {kinds})")
    if ed.has_bins:
        print(f"bin:           {sizer.bin_explanation(rep.bytes, ed.key)}")
    else:
        primary = ed.primary_size_measure
        div = GiB if ed.size_unit == "GiB" else GB
        if primary == "torch_save_bytes":
            fig = f"{ts.bytes / div:.3f} {ed.size_unit} (torch.save)" if ts else "torch.save (not available)"
        else:
            fig = f"{rep.bytes / div:.3f} {ed.size_unit} (safetensors)"
        print(f"edition {ed.key}:  no bins, Pareto ranking of quality and size; primary size measure {fig}")
    for w in rep.warnings:
        warn(w)
    return 0
