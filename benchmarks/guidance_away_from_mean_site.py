"""Probe (session 29, a negative result): source-site guidance for sources the model does
not know, pushed away from the *mean* site embedding instead of a stand-in site.

Runs ``quality_vs_peers.py`` (same arguments) with two patches: the loaded model gains one
extra site-embedding row, the mean of the trained rows, and a source whose site the model
does not know is guided away from that row (known sources keep their own site).  No
retraining.  Track B result: ``results/quality_vs_peers_session29_mean_site_away_trackB.md``
(it lost 0.7-2.8 dB against unguided; ``docs/model.md``, "Decisions of session 29").

    python benchmarks/guidance_away_from_mean_site.py --tracks B --no-peers \
        --source-guidance 0.5 1 --schemes vigintiles --ixi-derivatives DERIVS --results F
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_vs_peers as q  # noqa: E402
from harmonize_bids.diffusion import checkpoint  # noqa: E402

_load_model = checkpoint.load_model


def load_model_with_mean_site(path, **kwargs):
    """The model, its site embedding widened by one row: the mean of the trained rows."""
    model, card = _load_model(path, **kwargs)
    trained = model.site_embedding.weight.data
    widened = torch.nn.Embedding(trained.shape[0] + 1, trained.shape[1])
    widened.weight.data[:-1] = trained
    widened.weight.data[-1] = trained.mean(0)
    model.site_embedding = widened.eval()
    return model, card


_app_rule = q.guidance_site


def guidance_site(model, site: str, target: str) -> int | None:
    """The app's rule for a site the model knows; the mean row for one it does not."""
    if site in model.config.sites:
        return _app_rule(model, site, target)
    return len(model.config.sites)


if __name__ == "__main__":
    checkpoint.load_model = load_model_with_mean_site
    q.guidance_site = guidance_site
    q.main()
