"""VideoMAE models: shapes, token sets, target and loss against a literal transcription of the official code."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model import (SIZES, ModelConfig, VideoMAEClassifier, VideoMAEPretrain, classifier_flops, param_groups,
                   pretrain_flops, tube_num_masked, videomae_target)
from model.layers import IMAGENET_MEAN, IMAGENET_STD, resample_table, sincos_table

TINY = dict(size="tiny", num_frames=4, input_size=64)  # token grid 2 x 4 x 4 = 32 tokens


def tube_mask(batch, grid, ratio, seed=0):
    """Official tube masking: int(ratio * H'W') random spatial positions, the same in every time slot."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    rows = []
    for _ in range(batch):
        spatial = torch.zeros(h * w, dtype=torch.bool)
        spatial[torch.randperm(h * w, generator=g)[:int(ratio * h * w)]] = True
        rows.append(spatial.repeat(t))
    return torch.stack(rows)


def v2_running_cell(batch, grid, seed=0):
    """VideoMAE V2's RunningCellMaskingGenerator (ratio 0.5) transcribed: True = not reconstructed."""
    rng = np.random.default_rng(seed)
    t, h, w = grid
    queue = np.array([1, 1, 0, 0])
    rows = []
    for _ in range(batch):
        ptr = rng.integers(4)
        frames = []
        for _ in range(t):
            ptr += 1
            cell = queue[(np.arange(4) + ptr) % 4].reshape(2, 2)
            frames.append(np.tile(cell, [h // 2, w // 2]).flatten())
        rows.append(np.concatenate(frames))
    return torch.from_numpy(np.stack(rows)).bool()


def official_table(n, d):
    """The official get_sinusoid_encoding_table, in numpy."""
    angles = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float)[None]


def official_block(blk, x):
    """The official Block / Attention forward with explicit softmax attention."""
    def attention(a, x):
        b, n, c = x.shape
        bias = torch.cat((a.q_bias, torch.zeros_like(a.v_bias), a.v_bias))
        qkv = F.linear(x, a.qkv.weight, bias).reshape(b, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // a.num_heads) ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return a.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))
    x = x + attention(blk.attn, blk.norm1(x))
    return x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))


def official_pretrain(model, video, mask, decode_mask=None, normlize_target=True):
    """Official VideoMAE (V2) PretrainVisionTransformer.forward and engine loss, transcribed."""
    cfg = model.cfg
    enc, dec = model.encoder, model.decoder
    p, ts = cfg.patch_size, cfg.tubelet_size
    x = F.conv3d(video, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=(ts, p, p))
    x = x.flatten(2).transpose(1, 2) + official_table(cfg.num_tokens, cfg.embed_dim)
    b, _, c = x.shape
    x_vis = x[~mask].reshape(b, -1, c)
    for blk in enc.blocks:
        x_vis = official_block(blk, x_vis)
    x_vis = model.encoder_to_decoder(enc.norm(x_vis))
    pos = official_table(cfg.num_tokens, cfg.decoder_dim).expand(b, -1, -1)
    decode_vis = mask if decode_mask is None else ~decode_mask
    pos_vis = pos[~mask].reshape(b, -1, cfg.decoder_dim)
    pos_mask = pos[decode_vis].reshape(b, -1, cfg.decoder_dim)
    x_full = torch.cat([x_vis + pos_vis, model.mask_token + pos_mask], dim=1)
    for blk in dec.blocks:
        x_full = official_block(blk, x_full)
    outputs = dec.head(dec.norm(x_full[:, -pos_mask.shape[1]:]))

    mean = torch.as_tensor(IMAGENET_MEAN)[None, :, None, None, None]
    std = torch.as_tensor(IMAGENET_STD)[None, :, None, None, None]
    unnorm = video * std + mean
    if normlize_target:
        squeeze = rearrange(unnorm, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c", p0=ts, p1=p, p2=p)
        norm = (squeeze - squeeze.mean(dim=-2, keepdim=True)) / (
            squeeze.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
        patches = rearrange(norm, "b n p c -> b n (p c)")
    else:
        patches = rearrange(unnorm, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)", p0=ts, p1=p, p2=p)
    labels = patches[decode_vis].reshape(b, -1, patches.shape[-1])
    if decode_mask is None:
        loss = F.mse_loss(outputs, labels)
    else:
        per_token = ((outputs - labels) ** 2).mean(dim=-1)
        weight = mask[~decode_mask].reshape(b, -1)
        loss = (per_token * weight).sum() / weight.sum()
    return outputs, labels, loss


def make_tiny(**overrides):
    torch.manual_seed(0)
    model = VideoMAEPretrain(ModelConfig(**TINY, **overrides)).eval()
    with torch.no_grad():  # non-zero biases and mask token, so that every parameter shows in the outputs
        for param in model.parameters():
            if param.ndim == 1 or param.shape[0] == 1:
                param.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def tiny():
    return make_tiny()


def make_batch(cfg, batch=3, ratio=0.75, seed=0):
    video = torch.randn(batch, 3, cfg.num_frames, cfg.input_size, cfg.input_size,
                        generator=torch.Generator().manual_seed(seed))
    return video, tube_mask(batch, cfg.grid, ratio, seed)


@pytest.mark.parametrize("norm_target", [True, False])
def test_pretrain_matches_official_code(norm_target):
    model = make_tiny(norm_target=norm_target)
    video, mask = make_batch(model.cfg)
    with torch.no_grad():
        out = model(video, mask)
        pred, labels, loss = official_pretrain(model, video, mask, normlize_target=norm_target)
    torch.testing.assert_close(out["pred"], pred)
    torch.testing.assert_close(out["target"], labels)
    torch.testing.assert_close(out["loss"], loss)
    assert torch.equal(out["index"], mask.nonzero()[:, 1].reshape(3, -1))  # the masked tokens, in order


def test_dual_masking_matches_videomae_v2(tiny):
    cfg = tiny.cfg
    video, mask = make_batch(cfg, ratio=0.5)
    decoder_mask = v2_running_cell(3, cfg.grid)
    assert (decoder_mask.sum(1) == cfg.num_tokens // 2).all()
    with torch.no_grad():
        out = tiny(video, mask, decoder_mask, num_masked=int(mask[0].sum()), num_decoded=cfg.num_tokens // 2)
        pred, labels, loss = official_pretrain(tiny, video, mask, decoder_mask)
    torch.testing.assert_close(out["pred"], pred)
    torch.testing.assert_close(out["target"], labels)
    torch.testing.assert_close(out["loss"], loss)
    # the decoder also predicts encoder-visible tokens, the loss leaves them out
    predicted_visible = (~mask).gather(1, out["index"])
    assert predicted_visible.any() and not predicted_visible.all()
    # V2 without a decoder mask uses 1 - encoder mask: the same as VideoMAE V1
    with torch.no_grad():
        v1 = tiny(video, mask)
        v2 = tiny(video, mask, ~mask)
    torch.testing.assert_close(v1["loss"], v2["loss"])
    torch.testing.assert_close(v1["pred"], v2["pred"])


def test_encoder_sees_exactly_the_visible_tokens(tiny):
    cfg = tiny.cfg
    video, mask = make_batch(cfg, ratio=0.75)
    seen = {}
    hook = tiny.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        out = tiny(video, mask)
    hook.remove()
    num_visible = cfg.num_tokens - int(mask[0].sum())
    assert num_visible == cfg.grid[0] * (cfg.grid[1] * cfg.grid[2] - int(0.75 * 16))
    assert seen["x"].shape == (3, num_visible, cfg.embed_dim)
    # they are the visible cubes, embedded as the official Conv3d does, with their positions
    p, ts = cfg.patch_size, cfg.tubelet_size
    conv = F.conv3d(video, tiny.encoder.patch_embed.proj.weight, tiny.encoder.patch_embed.proj.bias,
                    stride=(ts, p, p)).flatten(2).transpose(1, 2) + official_table(cfg.num_tokens, cfg.embed_dim)
    torch.testing.assert_close(seen["x"], conv[~mask].reshape(3, num_visible, -1))
    assert out["pred"].shape == (3, cfg.num_tokens - num_visible, cfg.cube_dim)


def test_loss_is_taken_on_masked_cubes_only(tiny):
    cfg = tiny.cfg
    video, mask = make_batch(cfg, batch=2)
    with torch.no_grad():
        out = tiny(video, mask)
    masked = mask.nonzero()[:, 1].reshape(2, -1)
    assert torch.equal(out["index"], masked)
    target = videomae_target(video, cfg.patch_size, cfg.tubelet_size)  # every cube
    rows = torch.arange(2)[:, None]
    torch.testing.assert_close(out["loss"], (out["pred"] - target[rows, masked]).pow(2).mean())


def test_target_normalisation_direct():
    cfg = ModelConfig(**TINY)
    g = torch.Generator().manual_seed(1)
    video = torch.randn(2, 3, cfg.num_frames, cfg.input_size, cfg.input_size, generator=g)
    target = videomae_target(video, cfg.patch_size, cfg.tubelet_size)
    raw = videomae_target(video, cfg.patch_size, cfg.tubelet_size, norm_target=False)
    assert target.shape == (2, cfg.num_tokens, cfg.cube_dim)
    _, grid_h, grid_w = cfg.grid
    for b, token in [(0, 0), (1, 5), (1, cfg.num_tokens - 1)]:
        t, h, w = token // (grid_h * grid_w), token // grid_w % grid_h, token % grid_w
        cube = video[b, :, 2 * t:2 * t + 2, 16 * h:16 * h + 16, 16 * w:16 * w + 16]  # C x 2 x 16 x 16
        pixels = torch.stack([cube[c] * IMAGENET_STD[c] + IMAGENET_MEAN[c] for c in range(3)], dim=-1)
        flat = pixels.reshape(-1, 3)  # (t, h, w) x C
        assert torch.allclose(raw[b, token], flat.flatten())
        expected = torch.stack([(flat[:, c] - flat[:, c].mean()) / (flat[:, c].std(unbiased=True) + 1e-6)
                                for c in range(3)], dim=-1)
        torch.testing.assert_close(target[b, token], expected.flatten())


def test_sincos_table_matches_official():
    torch.testing.assert_close(sincos_table(1568, 768)[None], official_table(1568, 768))


def test_mask_contract_is_checked(tiny):
    cfg = tiny.cfg
    video, mask = make_batch(cfg, batch=2)
    ragged = mask.clone()
    ragged[0, (~ragged[0]).nonzero()[0]] = True
    with pytest.raises(ValueError, match="same number of True"):
        tiny(video, ragged)
    with pytest.raises(RuntimeError, match="num_masked=3"):
        tiny(video, mask, num_masked=3)
    with pytest.raises(ValueError, match="bool tensor"):
        tiny(video, mask.long())
    with pytest.raises(ValueError, match="model.input_size"):
        tiny(video[..., :32, :32], mask)


def test_shapes_every_size():
    for name in SIZES:
        device = "cpu" if name == "tiny" else "meta"
        cfg = ModelConfig(size=name) if name != "tiny" else ModelConfig(**TINY)
        num_masked = tube_num_masked(cfg, 0.9)
        mask = tube_mask(2, cfg.grid, 0.9).to(device)
        with torch.device(device):
            video = torch.zeros(2, 3, cfg.num_frames, cfg.input_size, cfg.input_size)
            out = VideoMAEPretrain(cfg)(video, mask, num_masked=num_masked)
            logits = VideoMAEClassifier(cfg, 400)(video)
        assert out["pred"].shape == (2, num_masked, cfg.cube_dim), name
        assert out["loss"].shape == () and logits.shape == (2, 400), name
    assert ModelConfig(size="giant").cube_dim == 2 * 14 * 14 * 3 and ModelConfig(size="giant").grid == (8, 16, 16)


@pytest.mark.parametrize("name, published", [("small", 22e6), ("base", 87e6), ("large", 305e6), ("huge", 633e6),
                                             ("giant", 1011e6)])
def test_parameter_counts_match_published(name, published):
    """Fine-tuning models at 16x224x224 with a 400-class head (VideoMAE Table 2, VideoMAE V2 Table 1)."""
    with torch.device("meta"):
        model = VideoMAEClassifier(ModelConfig(size=name), 400)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - published) / published < 0.01, count


@pytest.mark.parametrize("name, published", [("small", 57e9), ("base", 180e9), ("large", 597e9),
                                             ("huge", 1192e9)])
def test_classifier_flops_match_published(name, published):
    """VideoMAE reports multiply-adds per 16x224x224 view (Kinetics-400 table); we count 2 FLOPs per MAC."""
    flops = classifier_flops(ModelConfig(size=name), 400)["forward"]
    assert abs(flops / 2 - published) / published < 0.02, flops


def test_flops_match_flop_counter():
    """Analytic counts against torch's FlopCounterMode (math attention, so that attention matmuls are seen)."""
    cfg = ModelConfig(**TINY)
    torch.manual_seed(0)
    model = VideoMAEPretrain(cfg)
    video, mask = make_batch(cfg, batch=2, ratio=0.75)
    num_masked = int(mask[0].sum())
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            out = model(video, mask, num_masked=num_masked)
        with FlopCounterMode(display=False) as backward:
            out["loss"].backward()
    expected = pretrain_flops(cfg, num_masked)
    assert forward.get_total_flops() == 2 * expected["forward"]
    # backward = 2 x forward, less the gradient w.r.t. the input cubes, which nothing needs
    embed_input_grad = 2 * (cfg.num_tokens - num_masked) * cfg.cube_dim * cfg.embed_dim
    assert backward.get_total_flops() == 2 * (expected["backward"] - embed_input_grad)
    # V2 dual masking: the decoder runs on visible + decoded tokens
    decoder_mask = v2_running_cell(2, cfg.grid)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as dual:
        model(video, mask, decoder_mask)
    assert dual.get_total_flops() == 2 * pretrain_flops(cfg, num_masked, cfg.num_tokens // 2)["forward"]
    classifier = VideoMAEClassifier(cfg, 10)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fine:
        classifier(video)
    assert fine.get_total_flops() == 2 * classifier_flops(cfg, 10)["forward"]


def test_classifier_matches_official_code():
    cfg = ModelConfig(**TINY)
    torch.manual_seed(0)
    model = VideoMAEClassifier(cfg, 7).eval()
    video, _ = make_batch(cfg, batch=2)
    x = F.conv3d(video, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=(2, 16, 16))
    x = x.flatten(2).transpose(1, 2) + official_table(cfg.num_tokens, cfg.embed_dim)
    for blk in model.blocks:
        x = official_block(blk, x)
    expected = model.head(model.fc_norm(x.mean(1)))
    with torch.no_grad():
        torch.testing.assert_close(model(video), expected)
    # the official init: every Linear truncated at +-std (0.02), the head then scaled by 0.001
    linears = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "head"]
    assert all(m.weight.abs().max() <= 0.02 for m in linears)
    assert max(m.weight.std() for m in linears) < 0.02 * 0.9  # truncated at one std: std is about 0.54 x 0.02
    assert 0.001 * 0.015 < model.head.weight.abs().max() <= 0.001 * 0.02


def test_drop_path_rises_linearly_and_only_in_training():
    cfg = ModelConfig(**TINY, drop_path=0.2)
    model = VideoMAEClassifier(cfg, 3)
    assert [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0 for b in model.blocks] == \
        pytest.approx([0.0, 0.2])
    video, _ = make_batch(cfg, batch=4)
    model.eval()
    torch.testing.assert_close(model(video), model(video))
    model.train()
    assert not torch.allclose(model(video), model(video))


def test_activation_checkpointing_gives_the_same_gradients():
    video, mask = make_batch(ModelConfig(**TINY), batch=2)
    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        model = VideoMAEPretrain(ModelConfig(**TINY, use_checkpoint=use_checkpoint))
        model(video, mask)["loss"].backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_bf16_autocast_runs_with_float32_loss(tiny):
    video, mask = make_batch(tiny.cfg, batch=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(video, mask)
    assert out["pred"].dtype == torch.bfloat16 and out["loss"].dtype == torch.float32
    with torch.no_grad():
        reference = tiny(video, mask)["loss"]
    assert math.isclose(out["loss"].item(), reference.item(), rel_tol=0.05)


def test_param_groups_layer_decay_and_no_decay():
    cfg = ModelConfig(**TINY)
    model = VideoMAEClassifier(cfg, 5)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.75)
    where = {name: g for g in groups for name in g["param_names"]}
    assert set(where) == {n for n, _ in model.named_parameters()}
    num_layers = cfg.depth + 2
    assert where["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.75 ** (num_layers - 1))
    assert where["blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.75 ** (num_layers - 2))
    assert where["blocks.1.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.75)
    assert where["head.weight"]["lr_scale"] == where["fc_norm.weight"]["lr_scale"] == 1.0
    for name, group in where.items():
        no_decay = name.endswith((".bias", "q_bias", "v_bias")) or "norm" in name
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    pretrain = param_groups(VideoMAEPretrain(cfg), weight_decay=0.05)
    where = {name: g for g in pretrain for name in g["param_names"]}
    assert where["mask_token"]["weight_decay"] == 0.0 and where["encoder_to_decoder.weight"]["weight_decay"] == 0.05
    assert {g["lr_scale"] for g in pretrain} == {1.0}
    torch.optim.AdamW(groups, lr=1e-3)  # the groups are valid optimizer input
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(VideoMAEPretrain(cfg), 0.05, layer_decay=0.75)


def test_position_table_resampling():
    grid = (2, 4, 4)
    table = sincos_table(32, 64)
    torch.testing.assert_close(resample_table(table, grid, grid), table)
    bigger = resample_table(table, grid, (4, 6, 6))
    assert bigger.shape == (4 * 36, 64)
    # a table constant over space and time stays constant
    flat = torch.ones(32, 1) * torch.arange(64.0)
    torch.testing.assert_close(resample_table(flat, grid, (4, 6, 6)), torch.ones(144, 1) * torch.arange(64.0))
    # the classifier uses it when told the pre-training grid, and a fresh table otherwise
    cfg = dict(size="tiny", num_frames=8, input_size=96)
    fresh = VideoMAEClassifier(ModelConfig(**cfg), 2).pos_embed
    resampled = VideoMAEClassifier(ModelConfig(**cfg, pos_embed_grid=(2, 4, 4)), 2).pos_embed
    torch.testing.assert_close(fresh, sincos_table(144, 128))
    torch.testing.assert_close(resampled, resample_table(sincos_table(32, 128), grid, (4, 6, 6)))


@pytest.mark.parametrize("field, value, message", [
    ("input_size", 100, "model.input_size"), ("num_frames", 5, "model.tubelet_size"),
    ("size", "medium", "model.size"), ("drop_path", 1.5, "model.drop_path"),
    ("num_heads", 5, "model.num_heads"), ("pos_embed_grid", (8, 14), "model.pos_embed_grid"),
])
def test_config_errors_name_the_key(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"size": "base", field: value})


def test_config_defaults_follow_the_size():
    cfg = ModelConfig(size="large")
    assert (cfg.embed_dim, cfg.depth, cfg.decoder_dim, cfg.decoder_depth, cfg.patch_size) == (1024, 24, 512, 12, 16)
    assert ModelConfig(size="small", decoder_depth=2).decoder_depth == 2


@pytest.mark.gpu
def test_bf16_flash_attention_on_gpu():
    torch.manual_seed(0)
    cfg = ModelConfig(size="small", num_frames=16, input_size=224)
    model = VideoMAEPretrain(cfg).cuda()
    video, mask = make_batch(cfg, batch=2, ratio=0.9)
    num_masked = int(mask[0].sum())
    with torch.no_grad():
        reference = model(video.cuda(), mask.cuda(), num_masked=num_masked)["loss"]
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(video.cuda(), mask.cuda(), num_masked=num_masked)
    out["loss"].backward()
    assert out["pred"].dtype == torch.bfloat16
    assert math.isclose(out["loss"].item(), reference.item(), rel_tol=0.02)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
