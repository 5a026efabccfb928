import pytest

from dbunet.config import tiny
from dbunet.models import stats


def test_stats_cover_every_component_with_counted_flops():
    rows = {r.component: r for r in stats.component_stats(tiny())}
    assert set(rows) == {"text_encoder", "dbunet", "vae_decoder", "vae_encoder",
                         "refiner_encoder", "gae", "refiner_unet"}
    assert all(r.params > 0 for r in rows.values())
    assert rows["dbunet"].gflops > 0.1 and rows["refiner_unet"].gflops > 0.1


def test_cli_prints_a_table(capsys):
    assert stats.main(["--config", "tiny", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| dbunet |" in out and "GFLOPs/call" in out


def test_size_scales_the_convolution_counts():
    small = {r.component: r for r in stats.component_stats(tiny(), 64, 64)}
    default = {r.component: r for r in stats.component_stats(tiny())}  # 128x128
    # the VAE decoder is convolutions (4x the pixels: 4x the FLOPs) and one small mid-block attention (16x)
    assert 4 < default["vae_decoder"].gflops / small["vae_decoder"].gflops < 4.1
    assert "8x8 latent" in small["dbunet"].call and small["dbunet"].gflops < default["dbunet"].gflops
    assert small["text_encoder"].gflops == default["text_encoder"].gflops


def test_stats_refuse_an_unknown_preset_as_argparse_does(capsys):
    # before: a ConfigError traceback from inside the loop
    with pytest.raises(SystemExit) as exc:
        stats.main(["--config", "tiny", "nope"])
    assert exc.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
