"""Forward-pass levers measured as paired ratios: the kept one and those not kept.

This machine's speed changes within seconds, so each lever is measured by running
the two variants alternately (order swapped every round) many times and taking the
median and the interquartile range of the ratio of neighbouring run times. Runs on
the benchmark network (depth 4, 32 base channels, bf16, channels-last) and one tile
of the ``PredictConfig`` size; writes the table of docs/benchmarks.md's section
"Forward-pass levers tried and not kept".

    python benchmarks/tried_levers.py --data ../shared/data
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import _common as common
import numpy as np
import torch

G = ([1, 1], [1, 1], [1, 1], 1)  # padding, stride, dilation, groups of the 3x3 convolutions
CL = torch.channels_last


def paired(slow, fast, x, rounds: int) -> dict:
    """Median and quartiles of time(slow) / time(fast) over alternating rounds."""
    for f in (slow, fast, slow, fast):
        f(x)
    ratios = []
    for i in range(rounds):
        times = {}
        for name, f in (("slow", slow), ("fast", fast))[:: 1 if i % 2 else -1]:
            start = time.perf_counter()
            f(x)
            times[name] = time.perf_counter() - start
        ratios.append(times["slow"] / times["fast"])
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "rounds": rounds}


def _split_concatenation(network, pairs):
    """The fused forward with each decoder's first convolution split over the skip and
    the up-sampled halves, summed by a oneDNN post-op instead of concatenating."""
    ops = torch.ops.mkldnn
    packed, halves = {}, {}

    def pack(weight, shape):
        key = (weight.data_ptr(), tuple(shape))
        if key not in packed:
            packed[key] = ops._reorder_convolution_weight(weight, *G[:3], 1, list(shape))
        return packed[key]

    def conv_relu(conv, x):
        return ops._convolution_pointwise(
            x, pack(conv.weight, x.shape), conv.bias, *G, "relu", [], ""
        )

    def split_conv_relu(conv, skip, up):
        c = skip.shape[1]
        if id(conv) not in halves:
            w = conv.weight
            halves[id(conv)] = (
                w[:, :c].contiguous(memory_format=CL),
                w[:, c:].contiguous(memory_format=CL),
            )
        ws, wu = halves[id(conv)]
        other = ops._convolution_pointwise(
            skip, pack(ws, skip.shape), conv.bias, *G, "none", [], ""
        )
        return ops._convolution_pointwise.binary(
            up, other, pack(wu, up.shape), None, *G, "add", 1.0, "relu", [], ""
        )

    def forward(x):
        depth = len(network.encoders)
        skips = []
        for first, second in pairs[:depth]:
            x = conv_relu(second, conv_relu(first, x))
            skips.append(x)
            x = torch.max_pool2d(x, 2)
        x = conv_relu(pairs[depth][1], conv_relu(pairs[depth][0], x))
        for decoder, (first, second), skip in zip(
            network.decoders, pairs[depth + 1 :], reversed(skips), strict=True
        ):
            x = conv_relu(second, split_conv_relu(first, skip, decoder.up(x)))
        return network.head(x)

    return forward


def _layer_levers(network, x, rounds: int) -> dict:
    """Up-convolution as 1x1 convolution + pixel shuffle, and concatenation into one
    buffer, each against the operation it would replace, at every level."""
    ops = torch.ops.mkldnn
    feats = {}
    with torch.inference_mode():
        h = x
        for encoder in network.encoders:
            h = encoder(h)
            feats[h.shape[1]] = h
            h = network.pool(h)
    upconv, concat = {}, {}
    for decoder in network.decoders:
        up = decoder.up
        c_in, c_out = up.in_channels, up.out_channels
        size = feats[c_out].shape[-1] // 2
        low = torch.rand(1, c_in, size, size).to(x.dtype).contiguous(memory_format=CL)
        weight = up.weight.permute(1, 2, 3, 0).reshape(c_out * 4, c_in, 1, 1)
        weight = weight.contiguous(memory_format=CL)
        bias = up.bias.repeat_interleave(4)

        def shuffled(t, weight=weight, bias=bias):
            y = ops._convolution_pointwise(
                t, weight, bias, [0, 0], [1, 1], [1, 1], 1, "none", [], ""
            )
            return torch.pixel_shuffle(y, 2)

        with torch.inference_mode():
            upconv[f"{c_in}->{c_out} at {size}"] = paired(up, shuffled, low, rounds)
            skip = feats[c_out]
            other = torch.rand_like(skip)

            def cat(s, other=other):
                return torch.cat([s, other], 1)

            def buffer(s, other=other):
                out = torch.empty(
                    (s.shape[0], 2 * s.shape[1], *s.shape[2:]), dtype=s.dtype, memory_format=CL
                )
                out[:, : s.shape[1]] = s
                out[:, s.shape[1] :] = other
                return out

            concat[f"{c_out}+{c_out} at {skip.shape[-1]}"] = paired(cat, buffer, skip, rounds)
    return {"upconv_as_shuffle": upconv, "concat_into_buffer": concat}


def measure(data: Path, *, rounds: int = 100) -> dict:
    from napari_unet import PredictConfig
    from napari_unet._inference import _fusable_convs, fused_unet_forward
    from napari_unet.model import fuse_batchnorm

    common.set_threads()
    model = common.trained_model(data)
    network = fuse_batchnorm(copy.deepcopy(model.network).eval())
    network = network.to(torch.bfloat16).to(memory_format=CL)
    tile = PredictConfig().tile_size
    image = common.mosaic(data, model)[:tile, :tile]
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    x = x.to(torch.bfloat16).contiguous(memory_format=CL)
    fused = fused_unet_forward(network)
    blocks = [*network.encoders, network.bottleneck, *(d.conv for d in network.decoders)]
    pairs = [_fusable_convs(block) for block in blocks]
    split = _split_concatenation(network, pairs)
    with torch.inference_mode():
        reference = network(x).float()
        split_diff = float((split(x).float() - reference).abs().max())
        result = {
            "tile": tile,
            "fused_vs_separate": paired(network, fused, x, rounds),
            "split_concatenation": {
                **paired(fused, split, x, rounds),
                "max_abs_logit_diff": split_diff,
            },
        }
    result.update(_layer_levers(network, x, rounds))
    return result


def render(r: dict) -> str:
    def cell(p):
        return f"{p['median']:.2f}x ({p['q1']:.2f}-{p['q3']:.2f})"

    def span(group):
        medians = [p["median"] for p in group.values()]
        return f"{min(medians):.2f}-{max(medians):.2f}x by level"

    rows = [
        "| lever | speed-up: median (interquartile range) | kept? |",
        "|---|---|---|",
        "| each 3x3 convolution fused with its ReLU (oneDNN post-op, weights reordered once) "
        "and 2x2 pooling as two elementwise maxima, "
        f"against separate convolution and ReLU | {cell(r['fused_vs_separate'])} | "
        "yes: the default on the CPU |",
        "| decoder's first convolution split over the skip and up-sampled halves, summed by a "
        "oneDNN post-op instead of concatenating, against the fused default | "
        f"{cell(r['split_concatenation'])} | no: within the noise, and the sum rounds "
        f"differently in bf16 (logits differ by up to "
        f"{r['split_concatenation']['max_abs_logit_diff']:.3f}) |",
        "| 2x2 up-convolution as a 1x1 convolution to 4x the channels plus `pixel_shuffle`, "
        f"against `ConvTranspose2d` | {span(r['upconv_as_shuffle'])} | no: the shuffle copies "
        "as much as it saves |",
        "| skip concatenation written into one preallocated buffer, against `torch.cat` | "
        f"{span(r['concat_into_buffer'])} | no: the copy is bound by memory bandwidth "
        "either way |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, cpu_only=True)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args(argv)
    result = measure(args.data, rounds=args.rounds)
    common.save(result, "tried_levers", "cpu", args.json)
    print(render(result))


if __name__ == "__main__":
    main()
