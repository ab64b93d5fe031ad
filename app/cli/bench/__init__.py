"""`latentdesk bench compare`: Latent Desk against diffusers on the same machine, config and weights.

    specs.py            the sizes: SD1.5-shaped, and tiny for --quick
    reference.py        diffusers, imported lazily here only: its modules, pipeline and config folder
    openvino_ref.py     OpenVINO (`--against openvino`), imported lazily here only: the UNet step and VAE
                        decode converted from diffusers' modules, at f32 and at OpenVINO's default precision
    pair.py             one set of random weights as diffusers' modules and as ours (our converters)
    cases.py            UNet step, VAE decode, txt2img end to end, built-in model
    approximate.py      the approximate speed-ups against the exact image: speed-up and PSNR
    checkpoint_load.py  load time and peak RSS of a single file, each load in a fresh process
    load_probe.py       that process
    timing.py           warm-up, rounds in rotating order, medians and per-round ratios
    machine.py          what the numbers were measured on
    compare.py          the recipe that runs the cases
    report.py           markdown table and JSON

and, for scripts/bench_preview.py and tests/test_full_size.py (no diffusers needed):
    random_sd15.py      an SD1.5-shaped single file with random weights
"""
