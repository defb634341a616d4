"""llama.cpp flags that numatp does not have, and what to use instead.

Left to click, these go wrong in confusing ways: `-ngl 99` reads as `-n gl`, `-sys` as
`-s ys`, `-cnv` as `-c nv`. So the command line is checked for them before click parses
it, and the first one found is answered with numatp's way of doing the same.

A token counts as the flag when it is the flag itself or the flag followed by "=value";
everything after a bare "--" is left alone (it is not an option there).
"""

_INSTEAD = {
    ("-ngl", "--gpu-layers", "--n-gpu-layers"):
        "numatp offloads attention and the KV cache, not layers: use --gpu attn "
        "(the FFN and experts stay on the CPU, as llama.cpp's -ngl 99 -ot exps=CPU)",
    ("-cnv", "--conversation"): "use `numatp chat` (or generate --chat for one turn)",
    ("-no-cnv", "--no-conversation"):
        "numatp generate continues one prompt and has no conversation mode to turn off; "
        "leave the flag out",
    ("-sys", "--system-prompt"): "use --system (with chat, or generate --chat)",
    ("-hf", "-hfr", "--hf-repo"):
        "only the commands that load a model take it: generate, chat, serve, info and bench "
        "decode",
    ("--numa",): "numatp always places each worker's memory on its node; see --nodes",
}
_BY_FLAG = {flag: text for flags, text in _INSTEAD.items() for flag in flags}
# Commands that have a flag of their own by the llama.cpp name.
_HF = {"-hf", "-hfr", "--hf-repo"}
_OWN = {("generate",): _HF, ("chat",): _HF, ("serve",): _HF, ("info",): _HF,
        ("bench", "decode"): _HF}


def llamacpp_flag_note(args) -> str | None:
    """The line "FLAG: what to do instead" for the first llama.cpp-only flag among the
    command-line arguments `args`, None when there is none."""
    own = next((flags for command, flags in _OWN.items()
                if tuple(args[:len(command)]) == command), set())
    for arg in args:
        if arg == "--":
            return None
        flag = arg.split("=", 1)[0]
        if flag in _BY_FLAG and flag not in own:
            return f"{flag}: {_BY_FLAG[flag]}"
    return None
