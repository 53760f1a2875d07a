"""The scratch buffers CMSIS-NN's kernels ask TFLM for, per op and per build (DSP, as on
Cortex-M4/M7/M33, or MVE, as on Cortex-M55/M85), modelled on CMSIS-NN's buffer-size
functions (``arm_*_get_buffer_size*``) as TFLM's cmsis_nn kernels call them in Prepare.

Each function returns the bytes TFLM's ``RequestScratchBufferInArena`` is asked for (0:
no request), or None for a case not modelled (dilated filters, depth multipliers the
wrapper sends elsewhere): the derivation then gives no figure rather than a guess. GCC
builds are modelled (Arm Compiler 6's extra 1x1-convolution buffer is not), on a core with
the DSP extension at least (a Cortex-M0+/M3 build requests less: no figure is given for
it).
"""

from __future__ import annotations

from dataclasses import dataclass

from tfqnet.export.flatbuffer import FlatbufferModel, Operator

#: Input channels CMSIS-NN's MVE depthwise kernel handles per block (CH_IN_BLOCK_MVE in
#: arm_nnsupportfunctions.h): its buffer holds four im2col rows of this many channels.
CH_IN_BLOCK_MVE = 124


@dataclass(frozen=True)
class Window:
    """What TFLM's Prepare computes for a windowed op (NHWC): the shapes, stride,
    dilation and the padding of ComputePaddingHeightWidth (``total // 2`` each way)."""

    in_h: int
    in_w: int
    in_c: int
    f_h: int
    f_w: int
    out_h: int
    out_w: int
    out_c: int
    stride_h: int
    stride_w: int
    dilation_h: int = 1
    dilation_w: int = 1

    @property
    def pad_h(self) -> int:
        return _padding(self.in_h, self.f_h, self.out_h, self.stride_h, self.dilation_h)

    @property
    def pad_w(self) -> int:
        return _padding(self.in_w, self.f_w, self.out_w, self.stride_w, self.dilation_w)


def _padding(size: int, filt: int, out: int, stride: int, dilation: int) -> int:
    effective = (filt - 1) * dilation + 1
    return max(0, (out - 1) * stride + effective - size) // 2


def _options(graph: FlatbufferModel, op: Operator) -> object | None:
    """The op's builtin options from the flatbuffer (None for a graph built by hand)."""
    model = graph.schema_model
    if model is None:
        return None
    return model.subgraphs[0].operators[op.index].builtinOptions


def window(graph: FlatbufferModel, op: Operator, filter_hw: tuple[int, int] | None = None
           ) -> Window:
    """The op's :class:`Window`. ``filter_hw``: the pooling window (pools have no filter
    tensor); else the filter is input 1 (OHWI for CONV_2D, 1HWO for DEPTHWISE_CONV_2D).
    Stride, dilation and the pool window come from the builtin options; without them
    (a graph built by hand) the stride is taken as ceil(in / out) and the dilation as 1,
    which is right for SAME padding."""
    t = graph.tensors
    _, in_h, in_w, in_c = t[op.inputs[0]].shape
    _, out_h, out_w, out_c = t[op.outputs[0]].shape
    options = _options(graph, op)
    if filter_hw is None:
        _, f_h, f_w, _ = t[op.inputs[1]].shape
    else:
        f_h, f_w = filter_hw
        if options is not None:
            f_h, f_w = options.filterHeight, options.filterWidth
    if options is not None:
        stride_h, stride_w = options.strideH, options.strideW
        dilation_h = getattr(options, "dilationHFactor", 1)
        dilation_w = getattr(options, "dilationWFactor", 1)
    else:
        stride_h = max(1, -(-in_h // max(out_h, 1)))
        stride_w = max(1, -(-in_w // max(out_w, 1)))
        dilation_h = dilation_w = 1
    return Window(in_h, in_w, in_c, f_h, f_w, out_h, out_w, out_c, stride_h, stride_w,
                  dilation_h, dilation_w)


def _up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def conv_buffer(w: Window, int4: bool, mve: bool) -> int | None:
    """arm_convolve_wrapper_s8_get_buffer_size / arm_convolve_wrapper_s4_get_buffer_size
    (arm_convolve_get_buffer_sizes_s8.c and _s4.c): none for a 1x1 filter without
    padding (arm_convolve_1x1_s8_fast), the 1 x n kernel's buffer under MVE, else two
    im2col columns of int16 (DSP; INT4 too) or four 16-lane-padded int8 columns (MVE)."""
    if w.dilation_h != 1 or w.dilation_w != 1:
        return None
    if w.pad_w == 0 and w.pad_h == 0 and w.f_w == 1 and w.f_h == 1:
        return 0
    rhs_cols = w.f_w * w.f_h * w.in_c
    if int4:
        return 2 * rhs_cols * 2
    if mve:
        if w.in_h == 1 and w.f_h == 1 and w.stride_h == 1:  # arm_convolve_1_x_n_s8
            return (w.f_w + w.pad_w) * w.in_c
        return 4 * _up(rhs_cols, 16)
    return 2 * _up(rhs_cols, 4) * 2


def depthwise_buffer(w: Window, int4: bool, mve: bool) -> int | None:
    """arm_depthwise_conv_wrapper_s8_get_buffer_size and
    arm_depthwise_conv_wrapper_s4_get_buffer_size (arm_depthwise_conv_get_buffer_sizes_s8.c
    and _s4.c), for batch 1 without dilation:

    * depth multiplier above 1 (input channels != output channels): the generic kernel,
      no buffer;
    * INT4 filter: ``arm_depthwise_conv_s4_opt``'s in_c * f_w * f_h int16 values, on DSP
      and MVE builds alike;
    * int8 filter, DSP: none for a 3x3 filter with padding <= 1 (arm_depthwise_conv_3x3_s8),
      else ``arm_depthwise_conv_s8_opt``'s in_c * f_w * f_h int16 values;
    * int8 filter, MVE: 4 * CH_IN_BLOCK_MVE * f_w * f_h bytes, whatever the channels.
    """
    if w.dilation_h != 1 or w.dilation_w != 1:
        return None
    if w.in_c != w.out_c:
        return 0
    if int4:
        return w.in_c * w.f_w * w.f_h * 2
    if mve:
        return 4 * CH_IN_BLOCK_MVE * w.f_w * w.f_h
    if w.f_w == 3 and w.f_h == 3 and w.pad_h <= 1 and w.pad_w <= 1:
        return 0
    return w.in_c * w.f_w * w.f_h * 2


def avgpool_buffer(w: Window, mve: bool) -> int:
    """arm_avgpool_s8_get_buffer_size (arm_avgpool_get_buffer_sizes_s8.c): one int32
    accumulator per channel on DSP builds, none under MVE."""
    return 0 if mve else 4 * w.out_c
