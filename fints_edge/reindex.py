"""``python -m fints_edge.reindex --profile me.npz --encoder DIR``: re-key a profile for an encoder.

A profile's retrieval keys are its inputs embedded by one encoder, stored with that encoder's name
and probe; ``Encoder.check_compatible`` refuses queries from any other encoder, whose embeddings
live in another space. Switching encoders (say to the static one of ``export.static_encoder``)
re-embeds the stored inputs and replaces keys, name and probe together in one atomic write, so a
profile never holds keys of two encoders. Signals do not depend on the encoder and stay as they
are; no model is needed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fints_edge._cli import cli_main
from fints_edge._paths import default_encoder_dir
from fints_edge.encode import Encoder
from fints_edge.errors import FintsEdgeError
from fints_edge.profile import Profile, normalised_keys


def reindex(profile: Profile, encoder: Encoder) -> Profile:
    """A new profile whose keys [N, D] are ``encoder``'s embeddings of the stored inputs."""
    keys = encoder.encode([str(t) for t in profile.inputs])  # float32 [N, D]
    return replace(
        profile,
        keys=normalised_keys(keys),
        encoder_name=encoder.name,
        encoder_probe=encoder.probe(),
    )


@cli_main("interrupted; the profile was not changed")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fints_edge.reindex",
        description="Re-embed a profile's inputs with another sentence encoder (atomic write).",
    )
    p.add_argument("--profile", type=Path, required=True, help="the profile (.npz) to re-key")
    p.add_argument(
        "--encoder", type=Path, help=f"encoder folder (default: {default_encoder_dir()})"
    )
    p.add_argument("--out", type=Path, help="write here instead of replacing --profile")
    p.add_argument("--threads", type=int, default=1, help="encoder threads (default 1)")
    args = p.parse_args(argv)
    if args.out is not None and args.out.suffix != ".npz":  # before any work
        raise FintsEdgeError(f"{args.out}: a profile file name must end in .npz")
    out = args.out or args.profile
    profile = Profile.load(args.profile)
    encoder = Encoder(args.encoder or default_encoder_dir(), threads=max(1, args.threads))
    new = reindex(profile, encoder)
    new.save(out)
    print(
        f"{out}: {new.n_items} keys re-embedded with '{encoder.name}' ({encoder.dim} dims; "
        f"were '{profile.encoder_name}', {profile.keys.shape[1]} dims)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
