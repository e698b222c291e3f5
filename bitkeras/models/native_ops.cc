// BiT's two non-standard layers as TensorFlow CPU ops, each pass with its gradient:
// GroupNorm of channels-last float32 or bfloat16 activations, and weight
// standardization of float32 HWIO convolution kernels; and the transforms of
// Winograd's F(2x2, 3x3) for its 3x3 convolutions at stride 1 (below).
//
// TensorFlow runs the composed forms (`kernels.py`) as a dozen ops each, every
// op a pass over memory. Here GroupNorm's forward reads the activations twice
// and writes once, its gradient reads twice and writes once, one batch
// item at a time (an item's activations stay in the core's cache between the
// passes); weight standardization reads a kernel twice and writes once, its
// gradient reads twice and writes once. bitkeras builds this file on first use
// with the machine's C++ compiler (`native.py`); the arithmetic is that of
// `kernels._group_norm`, `kernels._group_norm_closed_form` and
// `kernels._standardize_closed_form`, with every sum in double.
//
// GroupNorm's layout: x is (batch, ..., channels), read as (batch, pixels,
// channels); channel c belongs to group c / (channels / groups). Statistics per
// (item, group) over the group's pixels and channels: sums per channel first
// (along the contiguous channel axis, so they vectorize), then per group.
//
// Weight standardization's layout: a kernel (height, width, in, out) is read as
// (rows, out); statistics per output channel over the rows, summed per chunk of
// rows (fixed by the shape) and then over the chunks in order: the same result
// whatever the thread count (GroupNorm's sums run per item, and over items in item
// order, alike).
//
// The 3x3 convolutions at stride 1 with "same" padding run as Winograd's minimal
// filtering F(2x2, 3x3) (Lavin and Gray, 2016): each 2x2 block of outputs is
// A^T [(G g G^T) * (B^T d B)] A from the 4x4 input tile d around it, so the 36
// multiply-adds per output block and channel pair become 16, done as 16 matrix
// products of (tiles, in) by (in, out) on TensorFlow's own matrix product
// (`native.winograd_convolution`). The ops here are the linear maps around those
// products: the input tiles' transform (B^T d B), the kernels' (G g G^T), the
// output's (A^T m A), and for the gradient the adjoint of each. Transformed values
// are laid out (16 positions, tiles, channels): position k = 4a + b; tile t = (item,
// tile row, tile column), tile (i, j) reading input rows 2i-1 .. 2i+2 and columns
// 2j-1 .. 2j+2 (zero outside) and writing output rows 2i, 2i+1 and columns 2j, 2j+1.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace bitkeras {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

struct Layout {
  int64_t items, pixels, channels, groups, per_group;
  // With pad > 0, GroupNorm's output is zero-padded by `pad` pixels on each side
  // of height and width (x being (batch, height, width, channels)).
  int64_t pad = 0, height = 1, width = 1;

  int64_t padded_width() const { return width + 2 * pad; }
  // Pixels per item of the (padded) output.
  int64_t padded_pixels() const {
    return pad == 0 ? pixels : (height + 2 * pad) * padded_width();
  }
  // Where x's pixel `pixel` of an item sits in the padded output.
  int64_t at(int64_t pixel) const {
    return pad == 0 ? pixel : pixel + pad * padded_width() + pad + pixel / width * 2 * pad;
  }
};

// The layout of x, checked against the sizes of gamma and beta, the group count and
// the padding (which needs height and width axes).
::absl::Status layout_of(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups,
                         int pad, Layout* layout) {
  if (x.dims() < 2) {
    return InvalidArgument("GroupNorm input needs a batch and a channel axis, got shape ",
                           x.shape().DebugString());
  }
  layout->items = x.dim_size(0);
  layout->channels = x.dim_size(x.dims() - 1);
  if (groups <= 0 || layout->channels % groups != 0) {
    return InvalidArgument("GroupNorm: ", layout->channels, " channels do not split into ",
                           groups, " groups");
  }
  if (gamma.NumElements() != layout->channels || beta.NumElements() != layout->channels) {
    return InvalidArgument("GroupNorm: gamma and beta need one value per channel (",
                           layout->channels, "), got ", gamma.NumElements(), " and ",
                           beta.NumElements());
  }
  layout->pixels = layout->items * layout->channels == 0
                       ? 0
                       : x.NumElements() / (layout->items * layout->channels);
  layout->groups = groups;
  layout->per_group = layout->channels / groups;
  if (pad > 0 && x.dims() != 4) {
    return InvalidArgument("GroupNorm with pad needs (batch, height, width, channels) input, "
                           "got shape ", x.shape().DebugString());
  }
  layout->pad = pad;
  layout->height = pad > 0 ? x.dim_size(1) : 1;
  layout->width = pad > 0 ? x.dim_size(2) : 1;
  return ::absl::OkStatus();
}

// The padded shape of x (its shape where pad is 0).
TensorShape padded_shape(const Tensor& x, const Layout& layout) {
  TensorShape shape = x.shape();
  if (layout.pad > 0) {
    shape.set_dim(1, x.dim_size(1) + 2 * layout.pad);
    shape.set_dim(2, x.dim_size(2) + 2 * layout.pad);
  }
  return shape;
}

// Activations are float32 or bfloat16 (mixed precision); arithmetic is in float (sums
// in double) either way. A bfloat16 result is rounded to nearest even, as TensorFlow's
// Cast rounds, so the op gives to the bit what casting to float32 and back around
// the float32 op gives.
// The conversions are bit operations without branches, so the loops vectorize.
inline float to_float(float value) { return value; }
inline float to_float(Eigen::bfloat16 value) {
  uint16_t half;
  std::memcpy(&half, &value, sizeof half);
  const uint32_t bits = static_cast<uint32_t>(half) << 16;
  float result;
  std::memcpy(&result, &bits, sizeof result);
  return result;
}

template <typename T>
inline T from_float(float value);

template <>
inline float from_float<float>(float value) {
  return value;
}

// Rounded to nearest even, as TensorFlow casts; a NaN stays a (quiet) NaN.
template <>
inline Eigen::bfloat16 from_float<Eigen::bfloat16>(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t nan = 0u - static_cast<uint32_t>((bits & 0x7fffffffu) > 0x7f800000u);
  const uint32_t quiet = ((bits >> 16) & 0x8000u) | 0x7fc0u;
  const uint16_t half = static_cast<uint16_t>((rounded & ~nan) | (quiet & nan));
  Eigen::bfloat16 result;
  std::memcpy(&result, &half, sizeof result);
  return result;
}

// Zeroes the padding of one item's output.
template <typename T>
void zero_padding(const Layout& layout, T* outputs) {
  if (layout.pad == 0) return;
  const int64_t row = layout.padded_width() * layout.channels;
  const int64_t side = layout.pad * layout.channels;
  const T zero = from_float<T>(0.0f);
  std::fill_n(outputs, layout.pad * row, zero);
  std::fill_n(outputs + (layout.height + layout.pad) * row, layout.pad * row, zero);
  for (int64_t h = 0; h < layout.height; ++h) {
    T* line = outputs + (h + layout.pad) * row;
    std::fill_n(line, side, zero);
    std::fill_n(line + side + layout.width * layout.channels, side, zero);
  }
}

// Runs work(first_item, end_item) over the batch on TensorFlow's CPU threads.
template <typename Work>
void for_each_item(OpKernelContext* context, const Layout& layout, int passes, Work work) {
  const int64_t cost = passes * layout.pixels * layout.channels;
  context->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(
      layout.items, cost, work);
}

// Sum over each group's channels of weights[c] * sums[c], one value per group.
double group_sum(const double* sums, const float* weights, const Layout& layout, int64_t group) {
  double total = 0;
  for (int64_t c = group * layout.per_group; c < (group + 1) * layout.per_group; ++c) {
    total += weights[c] * sums[c];
  }
  return total;
}

// GroupNorm's output before the ReLU. The gradient computes it again to know where
// the ReLU passed: the same float operations on the same floats (the build turns
// off contraction into fused multiply-adds), so the same value to the bit.
inline float normalized(float x, float mean, float scale, float beta) {
  return (x - mean) * scale + beta;
}

// `gradient` where `value` > 0, else 0 (a NaN or infinite gradient too, as
// TensorFlow's ReluGrad has it); by a bit mask, which vectorizes.
inline float passed_where_positive(float gradient, float value) {
  uint32_t bits;
  std::memcpy(&bits, &gradient, sizeof bits);
  bits &= 0u - static_cast<uint32_t>(value > 0.0f);
  float passed;
  std::memcpy(&passed, &bits, sizeof passed);
  return passed;
}

// One item's gradient (see GroupNormGradOp): per channel, the sums of the upstream
// gradient and of it times (x - mean) into `sums` and `products`, then dx, plus
// `residual` where it is given. With kRelu, the upstream gradient is zero wherever the
// output before the ReLU was not positive.
template <bool kRelu, typename T>
void group_norm_item_gradient(const Layout& layout, const T* rows, const T* gradients,
                              const float* gamma, const float* beta, const float* item_means,
                              const float* item_inverse_stds, const T* residual,
                              double* __restrict__ sums, double* __restrict__ products,
                              T* outputs) {
  const int64_t channels = layout.channels;
  std::vector<float> mean(channels), scale(channels), a(channels), b(channels), c0(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const int64_t group = c / layout.per_group;
    mean[c] = item_means[group];
    scale[c] = item_inverse_stds[group] * gamma[c];  // as the forward computed it
  }
  const float* __restrict__ means = mean.data();
  const float* __restrict__ scales = scale.data();
  const float* __restrict__ betas = beta;
  auto gated = [means, scales, betas](float up, float x, int64_t c) {
    if constexpr (kRelu) {
      return passed_where_positive(up, normalized(x, means[c], scales[c], betas[c]));
    } else {
      return up;
    }
  };
  for (int64_t pixel = 0; pixel < layout.pixels; ++pixel) {
    const T* __restrict__ row = rows + pixel * channels;
    const T* __restrict__ up = gradients + layout.at(pixel) * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float x = to_float(row[c]);
      const float g = gated(to_float(up[c]), x, c);
      sums[c] += g;
      products[c] += g * (x - means[c]);
    }
  }
  // dx = up * (r * gamma) - (x - mean) * (r^3 * mean_group(g * (x - mean)))
  //      - r * mean_group(g).
  const double count = static_cast<double>(layout.pixels) * layout.per_group;
  for (int64_t group = 0; group < layout.groups; ++group) {
    const double r = item_inverse_stds[group];
    const double mean_term = group_sum(sums, gamma, layout, group) / count;
    const double centered_term = group_sum(products, gamma, layout, group) / count;
    for (int64_t c = group * layout.per_group; c < (group + 1) * layout.per_group; ++c) {
      a[c] = static_cast<float>(r * gamma[c]);
      b[c] = static_cast<float>(r * r * r * centered_term);
      c0[c] = static_cast<float>(r * mean_term);
    }
  }
  const float* __restrict__ as = a.data();
  const float* __restrict__ bs = b.data();
  const float* __restrict__ c0s = c0.data();
  for (int64_t pixel = 0; pixel < layout.pixels; ++pixel) {
    const T* __restrict__ row = rows + pixel * channels;
    const T* __restrict__ up = gradients + layout.at(pixel) * channels;
    T* __restrict__ out = outputs + pixel * channels;
    if (residual == nullptr) {
      for (int64_t c = 0; c < channels; ++c) {
        const float x = to_float(row[c]);
        out[c] = from_float<T>(gated(to_float(up[c]), x, c) * as[c] - (x - means[c]) * bs[c] -
                               c0s[c]);
      }
    } else {
      // What adding `residual` to dx afterwards gives (dx rounded to T first), in one pass.
      const T* __restrict__ extra = residual + pixel * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const float x = to_float(row[c]);
        const T dx = from_float<T>(gated(to_float(up[c]), x, c) * as[c] -
                                   (x - means[c]) * bs[c] - c0s[c]);
        out[c] = from_float<T>(to_float(dx) + to_float(extra[c]));
      }
    }
  }
}

// With relu, the output is max(0, GroupNorm(x)): the ReLU that follows each of BiT's
// GroupNorms, without a pass of its own.
template <typename T>
class GroupNormOp : public OpKernel {
 public:
  explicit GroupNormOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(context, context->GetAttr("relu", &relu_));
    OP_REQUIRES_OK(context, context->GetAttr("pad", &pad_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x_tensor = context->input(0);
    const Tensor& gamma_tensor = context->input(1);
    const Tensor& beta_tensor = context->input(2);
    Layout layout;
    OP_REQUIRES_OK(context,
                   layout_of(x_tensor, gamma_tensor, beta_tensor, groups_, pad_, &layout));
    Tensor *y_tensor, *mean_tensor, *inverse_std_tensor;
    const TensorShape statistics_shape({layout.items, layout.groups});
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, padded_shape(x_tensor, layout), &y_tensor));
    OP_REQUIRES_OK(context, context->allocate_output(1, statistics_shape, &mean_tensor));
    OP_REQUIRES_OK(context,
                   context->allocate_output(2, statistics_shape, &inverse_std_tensor));
    const T* x = x_tensor.flat<T>().data();
    const float* gamma = gamma_tensor.flat<float>().data();
    const float* beta = beta_tensor.flat<float>().data();
    T* y = y_tensor->flat<T>().data();
    float* means = mean_tensor->flat<float>().data();
    float* inverse_stds = inverse_std_tensor->flat<float>().data();
    const double count = static_cast<double>(layout.pixels) * layout.per_group;
    const float epsilon = epsilon_;
    const bool relu = relu_;

    for_each_item(context, layout, 3, [&](int64_t first, int64_t end) {
      const int64_t channels = layout.channels;
      const double pixels = static_cast<double>(layout.pixels);
      std::vector<double> shift(channels), sums(channels), squares(channels);
      std::vector<double> channel_mean(channels);
      std::vector<float> mean(channels), scale(channels);
      for (int64_t item = first; item < end; ++item) {
        const int64_t offset = item * layout.pixels * channels;
        const T* rows = x + offset;
        // One pass: per channel, the sums of d = x - shift and of d * d, in double,
        // with the item's first pixel as the shift (a value of the channel's own,
        // so d stays near the channel's spread and its square loses nothing).
        for (int64_t c = 0; c < channels; ++c) {
          shift[c] = layout.pixels ? to_float(rows[c]) : 0.0f;
        }
        std::fill(sums.begin(), sums.end(), 0.0);
        std::fill(squares.begin(), squares.end(), 0.0);
        {
          const double* __restrict__ shifts = shift.data();
          double* __restrict__ sum = sums.data();
          double* __restrict__ square = squares.data();
          for (int64_t pixel = 0; pixel < layout.pixels; ++pixel) {
            const T* __restrict__ row = rows + pixel * channels;
            for (int64_t c = 0; c < channels; ++c) {
              const double d = static_cast<double>(to_float(row[c])) - shifts[c];
              sum[c] += d;
              square[c] += d * d;
            }
          }
        }
        for (int64_t group = 0; group < layout.groups; ++group) {
          const int64_t first_channel = group * layout.per_group;
          const int64_t end_channel = first_channel + layout.per_group;
          double total = 0;
          for (int64_t c = first_channel; c < end_channel; ++c) {
            channel_mean[c] = shift[c] + sums[c] / pixels;
            total += channel_mean[c];
          }
          const double group_mean = total / layout.per_group;
          // The group's squared deviations: each channel's own about its mean
          // (squares - sums^2 / pixels), plus pixels * (channel mean - group mean)^2.
          double deviations = 0;
          for (int64_t c = first_channel; c < end_channel; ++c) {
            const double offset_from_group = channel_mean[c] - group_mean;
            deviations += squares[c] - sums[c] * sums[c] / pixels +
                          pixels * offset_from_group * offset_from_group;
          }
          const float variance = static_cast<float>(std::max(deviations, 0.0) / count);
          const float inverse_std = 1.0f / std::sqrt(variance + epsilon);
          means[item * layout.groups + group] = static_cast<float>(group_mean);
          inverse_stds[item * layout.groups + group] = inverse_std;
          for (int64_t c = first_channel; c < end_channel; ++c) {
            mean[c] = static_cast<float>(group_mean);
            scale[c] = inverse_std * gamma[c];
          }
        }
        T* outputs = y + item * layout.padded_pixels() * channels;
        zero_padding(layout, outputs);
        for (int64_t pixel = 0; pixel < layout.pixels; ++pixel) {
          const T* __restrict__ row = rows + pixel * layout.channels;
          T* __restrict__ out = outputs + layout.at(pixel) * layout.channels;
          if (relu) {
            for (int64_t c = 0; c < layout.channels; ++c) {
              out[c] = from_float<T>(
                  std::max(normalized(to_float(row[c]), mean[c], scale[c], beta[c]), 0.0f));
            }
          } else {
            for (int64_t c = 0; c < layout.channels; ++c) {
              out[c] = from_float<T>(normalized(to_float(row[c]), mean[c], scale[c], beta[c]));
            }
          }
        }
      }
    });
  }

 private:
  int groups_;
  float epsilon_;
  bool relu_;
  int pad_;
};

// With xhat = (x - mean) * r per group and g = upstream * gamma:
// dx = r * (g - mean_group(g) - xhat * mean_group(g * xhat)),
// dgamma = sum over items and pixels of upstream * xhat, dbeta = that of upstream.
// With one `residual` input (x's gradient from its other use, a residual unit's
// identity shortcut), dx + residual: the sum without a pass of its own.
// With relu, upstream is first zeroed where the forward's output was: its
// pre-activation is computed again from x, to the bit (see `normalized`).
template <typename T>
class GroupNormGradOp : public OpKernel {
 public:
  explicit GroupNormGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(context, context->GetAttr("relu", &relu_));
    OP_REQUIRES_OK(context, context->GetAttr("pad", &pad_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& upstream_tensor = context->input(0);
    const Tensor& x_tensor = context->input(1);
    const Tensor& gamma_tensor = context->input(2);
    const Tensor& beta_tensor = context->input(3);
    Layout layout;
    OP_REQUIRES_OK(context,
                   layout_of(x_tensor, gamma_tensor, beta_tensor, groups_, pad_, &layout));
    const TensorShape output_shape = padded_shape(x_tensor, layout);
    OP_REQUIRES(context, upstream_tensor.shape() == output_shape,
                InvalidArgument("GroupNorm gradient: upstream shape ",
                                upstream_tensor.shape().DebugString(),
                                " differs from the output's ", output_shape.DebugString()));
    const TensorShape statistics_shape({layout.items, layout.groups});
    OP_REQUIRES(context,
                context->input(4).shape() == statistics_shape &&
                    context->input(5).shape() == statistics_shape,
                InvalidArgument("GroupNorm gradient: mean and inverse_std need shape ",
                                statistics_shape.DebugString()));
    ::tensorflow::OpInputList residuals;
    OP_REQUIRES_OK(context, context->input_list("residual", &residuals));
    OP_REQUIRES(context, residuals.size() <= 1,
                InvalidArgument("GroupNorm gradient: at most one residual, got ",
                                residuals.size()));
    const T* residual = nullptr;
    if (residuals.size() == 1) {
      const Tensor& residual_tensor = residuals[0];
      OP_REQUIRES(context, residual_tensor.shape() == x_tensor.shape(),
                  InvalidArgument("GroupNorm gradient: residual shape ",
                                  residual_tensor.shape().DebugString(), " differs from x's ",
                                  x_tensor.shape().DebugString()));
      residual = residual_tensor.flat<T>().data();
    }
    Tensor *dx_tensor, *dgamma_tensor, *dbeta_tensor;
    OP_REQUIRES_OK(context, context->allocate_output(0, x_tensor.shape(), &dx_tensor));
    OP_REQUIRES_OK(context, context->allocate_output(1, gamma_tensor.shape(), &dgamma_tensor));
    OP_REQUIRES_OK(context, context->allocate_output(2, gamma_tensor.shape(), &dbeta_tensor));
    const T* upstream = upstream_tensor.flat<T>().data();
    const T* x = x_tensor.flat<T>().data();
    const float* gamma = gamma_tensor.flat<float>().data();
    const float* beta = beta_tensor.flat<float>().data();
    const float* means = context->input(4).flat<float>().data();
    const float* inverse_stds = context->input(5).flat<float>().data();
    T* dx = dx_tensor->flat<T>().data();
    // Per item and channel: sum of upstream, and of upstream * (x - mean).
    std::vector<double> upstream_sums(layout.items * layout.channels, 0.0);
    std::vector<double> centered_sums(layout.items * layout.channels, 0.0);
    const bool relu = relu_;

    const int passes = residual == nullptr ? 5 : 6;
    for_each_item(context, layout, passes, [&](int64_t first, int64_t end) {
      for (int64_t item = first; item < end; ++item) {
        const int64_t offset = item * layout.pixels * layout.channels;
        const T* item_upstream = upstream + item * layout.padded_pixels() * layout.channels;
        const int64_t statistics = item * layout.groups;
        double* sums = upstream_sums.data() + item * layout.channels;
        double* products = centered_sums.data() + item * layout.channels;
        const T* item_residual = residual == nullptr ? nullptr : residual + offset;
        if (relu) {
          group_norm_item_gradient<true>(layout, x + offset, item_upstream, gamma, beta,
                                         means + statistics, inverse_stds + statistics,
                                         item_residual, sums, products, dx + offset);
        } else {
          group_norm_item_gradient<false>(layout, x + offset, item_upstream, gamma, beta,
                                          means + statistics, inverse_stds + statistics,
                                          item_residual, sums, products, dx + offset);
        }
      }
    });

    // Over the batch, in item order (the same sums on every run).
    float* dgamma = dgamma_tensor->flat<float>().data();
    float* dbeta = dbeta_tensor->flat<float>().data();
    for (int64_t c = 0; c < layout.channels; ++c) {
      double gamma_total = 0, beta_total = 0;
      for (int64_t item = 0; item < layout.items; ++item) {
        const double r = inverse_stds[item * layout.groups + c / layout.per_group];
        gamma_total += centered_sums[item * layout.channels + c] * r;
        beta_total += upstream_sums[item * layout.channels + c];
      }
      dgamma[c] = static_cast<float>(gamma_total);
      dbeta[c] = static_cast<float>(beta_total);
    }
  }

 private:
  int groups_;
  bool relu_;
  int pad_;
};

// Weight standardization per output channel: w = (k - mean) * r, r = 1 / sqrt(var + epsilon).

// The kernel read as (rows, channels): channels is the last axis.
::absl::Status kernel_layout(const Tensor& kernel, int64_t* rows, int64_t* channels) {
  if (kernel.dims() < 1) {
    return InvalidArgument("weight standardization needs a kernel with an output-channel "
                           "axis, got a scalar");
  }
  *channels = kernel.dim_size(kernel.dims() - 1);
  *rows = *channels == 0 ? 0 : kernel.NumElements() / *channels;
  return ::absl::OkStatus();
}

constexpr int64_t kRowsPerChunk = 256;

// Runs work(chunk, first_row, end_row) for each chunk of kRowsPerChunk rows on
// TensorFlow's CPU threads: whole rows, so memory is read front to back. Chunks are
// fixed by the shape alone, so per-chunk sums added in chunk order give the same
// result whatever the thread count.
template <typename Work>
void for_each_row_chunk(OpKernelContext* context, int64_t rows, int64_t channels, int passes,
                        Work work) {
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  context->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(
      chunks, passes * kRowsPerChunk * channels, [&](int64_t first, int64_t end) {
        for (int64_t chunk = first; chunk < end; ++chunk) {
          work(chunk, chunk * kRowsPerChunk, std::min((chunk + 1) * kRowsPerChunk, rows));
        }
      });
}

// totals[c] = sum over chunks, in chunk order, of partials[chunk * channels + c].
std::vector<double> chunk_totals(const std::vector<double>& partials, int64_t channels) {
  std::vector<double> totals(channels, 0.0);
  for (size_t offset = 0; offset < partials.size(); offset += channels) {
    for (int64_t c = 0; c < channels; ++c) totals[c] += partials[offset + c];
  }
  return totals;
}

class StandardizeOp : public OpKernel {
 public:
  explicit StandardizeOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& kernel_tensor = context->input(0);
    int64_t rows, channels;
    OP_REQUIRES_OK(context, kernel_layout(kernel_tensor, &rows, &channels));
    Tensor *standardized_tensor, *inverse_std_tensor;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, kernel_tensor.shape(), &standardized_tensor));
    OP_REQUIRES_OK(context,
                   context->allocate_output(1, TensorShape({channels}), &inverse_std_tensor));
    const float* kernel = kernel_tensor.flat<float>().data();
    float* standardized = standardized_tensor->flat<float>().data();
    float* inverse_stds = inverse_std_tensor->flat<float>().data();
    const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;

    // Sums of (k - shift) and its square, shift being the channel's first value:
    // one pass, and no cancellation when the mean is large against the spread.
    std::vector<double> shift(channels, 0.0);
    if (rows > 0) std::copy_n(kernel, channels, shift.begin());
    std::vector<double> partial_sums(chunks * channels, 0.0);
    std::vector<double> partial_squares(chunks * channels, 0.0);
    for_each_row_chunk(context, rows, channels, 1, [&](int64_t chunk, int64_t first,
                                                       int64_t end) {
      double* __restrict__ sum = partial_sums.data() + chunk * channels;
      double* __restrict__ square = partial_squares.data() + chunk * channels;
      const double* __restrict__ shifts = shift.data();
      for (int64_t row = first; row < end; ++row) {
        const float* __restrict__ values = kernel + row * channels;
        for (int64_t c = 0; c < channels; ++c) {
          const double shifted = values[c] - shifts[c];
          sum[c] += shifted;
          square[c] += shifted * shifted;
        }
      }
    });
    const std::vector<double> sums = chunk_totals(partial_sums, channels);
    const std::vector<double> squares = chunk_totals(partial_squares, channels);
    // Centred in double too: a mean rounded to float would shift every value.
    std::vector<double> mean(channels), scale(channels);
    for (int64_t c = 0; c < channels; ++c) {
      const double shifted_mean = sums[c] / rows;
      const double variance = std::max(squares[c] / rows - shifted_mean * shifted_mean, 0.0);
      mean[c] = shift[c] + shifted_mean;
      scale[c] = 1.0 / std::sqrt(variance + epsilon_);
      inverse_stds[c] = static_cast<float>(scale[c]);
    }
    for_each_row_chunk(context, rows, channels, 2, [&](int64_t, int64_t first, int64_t end) {
      const double* __restrict__ means = mean.data();
      const double* __restrict__ scales = scale.data();
      for (int64_t row = first; row < end; ++row) {
        const float* __restrict__ values = kernel + row * channels;
        float* __restrict__ out = standardized + row * channels;
        for (int64_t c = 0; c < channels; ++c) {
          out[c] = static_cast<float>((values[c] - means[c]) * scales[c]);
        }
      }
    });
  }

 private:
  float epsilon_;
};

// With w = (k - mean) * r per output channel and u the upstream gradient:
// dk = r * (u - mean(u) - w * mean(u * w)), means over the channel's rows.
class StandardizeGradOp : public OpKernel {
 public:
  explicit StandardizeGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& upstream_tensor = context->input(0);
    const Tensor& standardized_tensor = context->input(1);
    const Tensor& inverse_std_tensor = context->input(2);
    int64_t rows, channels;
    OP_REQUIRES_OK(context, kernel_layout(standardized_tensor, &rows, &channels));
    OP_REQUIRES(context, upstream_tensor.shape() == standardized_tensor.shape(),
                InvalidArgument("weight standardization gradient: upstream shape ",
                                upstream_tensor.shape().DebugString(),
                                " differs from the standardized kernel's ",
                                standardized_tensor.shape().DebugString()));
    OP_REQUIRES(context, inverse_std_tensor.shape() == TensorShape({channels}),
                InvalidArgument("weight standardization gradient: inverse_std needs shape [",
                                channels, "], got ",
                                inverse_std_tensor.shape().DebugString()));
    Tensor* dkernel_tensor;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, standardized_tensor.shape(), &dkernel_tensor));
    const float* upstream = upstream_tensor.flat<float>().data();
    const float* standardized = standardized_tensor.flat<float>().data();
    const float* inverse_stds = inverse_std_tensor.flat<float>().data();
    float* dkernel = dkernel_tensor->flat<float>().data();
    const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;

    std::vector<double> partial_sums(chunks * channels, 0.0);
    std::vector<double> partial_products(chunks * channels, 0.0);
    for_each_row_chunk(context, rows, channels, 2, [&](int64_t chunk, int64_t first,
                                                       int64_t end) {
      double* __restrict__ sum = partial_sums.data() + chunk * channels;
      double* __restrict__ product = partial_products.data() + chunk * channels;
      for (int64_t row = first; row < end; ++row) {
        const float* __restrict__ up = upstream + row * channels;
        const float* __restrict__ w = standardized + row * channels;
        for (int64_t c = 0; c < channels; ++c) {
          sum[c] += up[c];
          product[c] += static_cast<double>(up[c]) * w[c];
        }
      }
    });
    const std::vector<double> sums = chunk_totals(partial_sums, channels);
    const std::vector<double> products = chunk_totals(partial_products, channels);
    std::vector<float> mean_term(channels), product_term(channels);
    for (int64_t c = 0; c < channels; ++c) {
      mean_term[c] = static_cast<float>(sums[c] / rows);
      product_term[c] = static_cast<float>(products[c] / rows);
    }
    for_each_row_chunk(context, rows, channels, 3, [&](int64_t, int64_t first, int64_t end) {
      const float* __restrict__ means = mean_term.data();
      const float* __restrict__ product_means = product_term.data();
      for (int64_t row = first; row < end; ++row) {
        const float* __restrict__ up = upstream + row * channels;
        const float* __restrict__ w = standardized + row * channels;
        float* __restrict__ out = dkernel + row * channels;
        for (int64_t c = 0; c < channels; ++c) {
          out[c] = inverse_stds[c] * (up[c] - means[c] - w[c] * product_means[c]);
        }
      }
    });
  }
};

// ---------------------------------------------------------------------------------
// Winograd F(2x2, 3x3): the transforms around the 16 matrix products.
//
// B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
// G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
// A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
// Each transform is applied along one axis of a tile, then the other, a block of
// kChannelBlock channels at a time, so that the inner loops run over contiguous
// channels (they vectorize) and the 16 position planes are written in blocks.

constexpr int kPositions = 16;
constexpr int64_t kChannelBlock = 64;

struct Tiling {
  int64_t items, height, width, channels;
  int64_t tile_rows() const { return (height + 1) / 2; }
  int64_t tile_cols() const { return (width + 1) / 2; }
  int64_t tiles() const { return items * tile_rows() * tile_cols(); }
  // Offset of tile (item, i, j) within one position plane.
  int64_t tile(int64_t item, int64_t i, int64_t j) const {
    return ((item * tile_rows() + i) * tile_cols() + j) * channels;
  }
  int64_t pixel(int64_t item, int64_t h, int64_t w) const {
    return ((item * height + h) * width + w) * channels;
  }
  TensorShape image_shape() const { return TensorShape({items, height, width, channels}); }
  TensorShape transformed_shape() const { return TensorShape({kPositions, tiles(), channels}); }
};

::absl::Status image_tiling(const Tensor& image, const char* name, Tiling* tiling) {
  if (image.dims() != 4) {
    return InvalidArgument("Winograd convolution: ", name,
                           " needs shape (batch, height, width, channels), got ",
                           image.shape().DebugString());
  }
  *tiling = {image.dim_size(0), image.dim_size(1), image.dim_size(2), image.dim_size(3)};
  return ::absl::OkStatus();
}

// The tiling of an image given as a shape vector (batch, height, width) and a channel
// count, checked against transformed values (16, tiles, channels).
::absl::Status transformed_tiling(const Tensor& transformed, const Tensor& shape,
                                  Tiling* tiling) {
  if (transformed.dims() != 3 || transformed.dim_size(0) != kPositions) {
    return InvalidArgument("Winograd convolution: transformed values need shape (16, tiles, "
                           "channels), got ", transformed.shape().DebugString());
  }
  if (shape.dims() != 1 || shape.NumElements() != 3) {
    return InvalidArgument("Winograd convolution: image shape needs (batch, height, width), "
                           "got ", shape.DebugString());
  }
  const auto sizes = shape.flat<int32_t>();
  if (sizes(0) < 0 || sizes(1) < 0 || sizes(2) < 0) {
    return InvalidArgument("Winograd convolution: negative image shape ", shape.DebugString());
  }
  *tiling = {sizes(0), sizes(1), sizes(2), transformed.dim_size(2)};
  if (tiling->tiles() != transformed.dim_size(1)) {
    return InvalidArgument("Winograd convolution: ", transformed.dim_size(1),
                           " tiles do not cover an image of ", sizes(0), "x", sizes(1), "x",
                           sizes(2), " (", tiling->tiles(), " tiles)");
  }
  return ::absl::OkStatus();
}

// For the ops from transformed values (input 0, (16, tiles, channels)) to an image of
// the shape input 1 gives: checks the two, allocates the image as output 0.
::absl::Status image_from_transformed(OpKernelContext* context, Tiling* tiling,
                                      const float** transformed, float** image) {
  const Tensor& transformed_tensor = context->input(0);
  TF_RETURN_IF_ERROR(transformed_tiling(transformed_tensor, context->input(1), tiling));
  Tensor* image_tensor;
  TF_RETURN_IF_ERROR(context->allocate_output(0, tiling->image_shape(), &image_tensor));
  *transformed = transformed_tensor.flat<float>().data();
  *image = image_tensor->flat<float>().data();
  return ::absl::OkStatus();
}

// Runs work(first, end) over tasks on TensorFlow's CPU threads.
template <typename Work>
void for_each_task(OpKernelContext* context, int64_t tasks, int64_t cost, Work work) {
  context->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(tasks, cost, work);
}

// Runs work(item, i, j) for every tile (i, j) of every item, whole tile rows per task;
// `cost`: operations per value of a tile's channels.
template <typename Work>
void for_each_tile(OpKernelContext* context, const Tiling& tiling, int64_t cost, Work work) {
  for_each_task(context, tiling.items * tiling.tile_rows(),
                cost * tiling.tile_cols() * tiling.channels, [&](int64_t first, int64_t end) {
    for (int64_t task = first; task < end; ++task) {
      for (int64_t j = 0; j < tiling.tile_cols(); ++j) {
        work(task / tiling.tile_rows(), task % tiling.tile_rows(), j);
      }
    }
  });
}

// Transformed values (16, tiles, channels) from an image (items, height, width,
// channels): for every tile (i, j), Transform reads the kSide x kSide pixels from row
// 2i + kFirst and column 2j + kFirst (zero outside the image) and writes the tile's 16
// positions, kChannelBlock channels at a time.
template <typename Transform>
class ImageTilesOp : public OpKernel {
 public:
  explicit ImageTilesOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    constexpr int kSide = Transform::kSide;
    const Tensor& image_tensor = context->input(0);
    Tiling tiling;
    OP_REQUIRES_OK(context, image_tiling(image_tensor, Transform::kName, &tiling));
    Tensor* tiles_tensor;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, tiling.transformed_shape(), &tiles_tensor));
    const float* image = image_tensor.flat<float>().data();
    float* tiles = tiles_tensor->flat<float>().data();
    const int64_t channels = tiling.channels, plane = tiling.tiles() * channels;
    const std::vector<float> zeros(channels, 0.0f);
    for_each_tile(context, tiling, Transform::kCost, [&](int64_t item, int64_t i, int64_t j) {
      const float* pixels[kSide][kSide];  // rows p, columns q
      for (int p = 0; p < kSide; ++p) {
        for (int q = 0; q < kSide; ++q) {
          const int64_t h = 2 * i + Transform::kFirst + p, w = 2 * j + Transform::kFirst + q;
          const bool inside = h >= 0 && h < tiling.height && w >= 0 && w < tiling.width;
          pixels[p][q] = inside ? image + tiling.pixel(item, h, w) : zeros.data();
        }
      }
      float* tile = tiles + tiling.tile(item, i, j);
      for (int64_t c0 = 0; c0 < channels; c0 += kChannelBlock) {
        Transform::apply(pixels, c0, std::min(kChannelBlock, channels - c0), tile + c0, plane);
      }
    });
  }
};

// WinogradInput: v = B^T d B for every 4x4 tile d of x around its 2x2 outputs.
struct InputTransform {
  static constexpr int kSide = 4, kFirst = -1, kCost = 32;
  static constexpr const char* kName = "input";

  static void apply(const float* const (&d)[4][4], int64_t c0, int64_t count, float* tile,
                    int64_t plane) {
    float rows[4][4][kChannelBlock];  // B^T d: [a][q]
    for (int q = 0; q < 4; ++q) {
      const float* __restrict__ d0 = d[0][q] + c0;
      const float* __restrict__ d1 = d[1][q] + c0;
      const float* __restrict__ d2 = d[2][q] + c0;
      const float* __restrict__ d3 = d[3][q] + c0;
      float* __restrict__ r0 = rows[0][q];
      float* __restrict__ r1 = rows[1][q];
      float* __restrict__ r2 = rows[2][q];
      float* __restrict__ r3 = rows[3][q];
      for (int64_t c = 0; c < count; ++c) {
        r0[c] = d0[c] - d2[c];
        r1[c] = d1[c] + d2[c];
        r2[c] = d2[c] - d1[c];
        r3[c] = d1[c] - d3[c];
      }
    }
    for (int a = 0; a < 4; ++a) {  // (B^T d) B: positions 4a .. 4a + 3
      const float* __restrict__ s0 = rows[a][0];
      const float* __restrict__ s1 = rows[a][1];
      const float* __restrict__ s2 = rows[a][2];
      const float* __restrict__ s3 = rows[a][3];
      float* __restrict__ v0 = tile + 4 * a * plane;
      float* __restrict__ v1 = v0 + plane;
      float* __restrict__ v2 = v1 + plane;
      float* __restrict__ v3 = v2 + plane;
      for (int64_t c = 0; c < count; ++c) {
        v0[c] = s0[c] - s2[c];
        v1[c] = s1[c] + s2[c];
        v2[c] = s2[c] - s1[c];
        v3[c] = s1[c] - s3[c];
      }
    }
  }
};

// WinogradOutputGrad, the adjoint of WinogradOutput: dm = A dy A^T for every tile's 2x2
// outputs dy (zero past the image's last row or column).
struct OutputGradTransform {
  static constexpr int kSide = 2, kFirst = 0, kCost = 24;
  static constexpr const char* kName = "output gradient";

  static void apply(const float* const (&g)[2][2], int64_t c0, int64_t count, float* tile,
                    int64_t plane) {
    float rows[4][2][kChannelBlock];  // A dy: [a][s]
    for (int s = 0; s < 2; ++s) {
      const float* __restrict__ g0 = g[0][s] + c0;
      const float* __restrict__ g1 = g[1][s] + c0;
      float* __restrict__ e0 = rows[0][s];
      float* __restrict__ e1 = rows[1][s];
      float* __restrict__ e2 = rows[2][s];
      float* __restrict__ e3 = rows[3][s];
      for (int64_t c = 0; c < count; ++c) {
        e0[c] = g0[c];
        e1[c] = g0[c] + g1[c];
        e2[c] = g0[c] - g1[c];
        e3[c] = -g1[c];
      }
    }
    for (int a = 0; a < 4; ++a) {  // (A dy) A^T: positions 4a .. 4a + 3
      const float* __restrict__ s0 = rows[a][0];
      const float* __restrict__ s1 = rows[a][1];
      float* __restrict__ m0 = tile + 4 * a * plane;
      float* __restrict__ m1 = m0 + plane;
      float* __restrict__ m2 = m1 + plane;
      float* __restrict__ m3 = m2 + plane;
      for (int64_t c = 0; c < count; ++c) {
        m0[c] = s0[c];
        m1[c] = s0[c] + s1[c];
        m2[c] = s0[c] - s1[c];
        m3[c] = -s1[c];
      }
    }
  }
};

// The adjoint of WinogradInput: dx from dv, each pixel the sum of B dv B^T over the
// (up to four) tiles that read it. Task m writes input rows 2m-1 and 2m, which tile row
// m reads as its rows 0 and 1 and tile row m-1 as its rows 2 and 3; within a task the
// tiles of a row overlap in two columns and are added in column order, so every pixel's
// sum runs in one fixed order, whatever the thread count.
class WinogradInputGradOp : public OpKernel {
 public:
  explicit WinogradInputGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    Tiling tiling;
    const float* dv;
    float* dx;
    OP_REQUIRES_OK(context, image_from_transformed(context, &tiling, &dv, &dx));
    const int64_t channels = tiling.channels, plane = tiling.tiles() * channels;
    const int64_t pairs = tiling.tile_rows() + 1, row_length = (2 * tiling.tile_cols() + 2) *
                                                               channels;
    for_each_task(context, tiling.items * pairs, 64 * tiling.tile_cols() * channels,
                  [&](int64_t first, int64_t end) {
      // The task's two rows, from column -1 to column 2 * tile_cols.
      std::vector<float> sums(2 * row_length);
      for (int64_t task = first; task < end; ++task) {
        const int64_t item = task / pairs, m = task % pairs;
        std::fill(sums.begin(), sums.end(), 0.0f);
        for (int half = 0; half < 2; ++half) {
          const int64_t i = m - half;
          if (i < 0 || i >= tiling.tile_rows()) continue;
          for (int64_t j = 0; j < tiling.tile_cols(); ++j) {
            const float* tile = dv + tiling.tile(item, i, j);
            for (int r = 0; r < 2; ++r) {
              const int p = 2 * half + r;  // the row within the tile
              float* line = sums.data() + r * row_length + 2 * j * channels;
              for (int64_t c0 = 0; c0 < channels; c0 += kChannelBlock) {
                const int64_t count = std::min(kChannelBlock, channels - c0);
                float row[4][kChannelBlock];  // row p of B dv: [b]
                for (int b = 0; b < 4; ++b) {
                  const float* __restrict__ v0 = tile + b * plane + c0;
                  const float* __restrict__ v1 = v0 + 4 * plane;
                  const float* __restrict__ v2 = v1 + 4 * plane;
                  const float* __restrict__ v3 = v2 + 4 * plane;
                  float* __restrict__ e = row[b];
                  if (p == 0) {
                    for (int64_t c = 0; c < count; ++c) e[c] = v0[c];
                  } else if (p == 1) {
                    for (int64_t c = 0; c < count; ++c) e[c] = v1[c] - v2[c] + v3[c];
                  } else if (p == 2) {
                    for (int64_t c = 0; c < count; ++c) e[c] = v1[c] + v2[c] - v0[c];
                  } else {
                    for (int64_t c = 0; c < count; ++c) e[c] = -v3[c];
                  }
                }
                const float* __restrict__ e0 = row[0];
                const float* __restrict__ e1 = row[1];
                const float* __restrict__ e2 = row[2];
                const float* __restrict__ e3 = row[3];
                float* __restrict__ x0 = line + c0;
                float* __restrict__ x1 = x0 + channels;
                float* __restrict__ x2 = x1 + channels;
                float* __restrict__ x3 = x2 + channels;
                for (int64_t c = 0; c < count; ++c) {
                  x0[c] += e0[c];
                  x1[c] += e1[c] - e2[c] + e3[c];
                  x2[c] += e1[c] + e2[c] - e0[c];
                  x3[c] -= e3[c];
                }
              }
            }
          }
        }
        for (int r = 0; r < 2; ++r) {
          const int64_t h = 2 * m - 1 + r;
          if (h < 0 || h >= tiling.height) continue;
          std::copy_n(sums.data() + r * row_length + channels, tiling.width * channels,
                      dx + tiling.pixel(item, h, 0));
        }
      }
    });
  }
};

// y = A^T m A for every tile of m (16, tiles, channels), into y (items, height,
// width, channels); a tile's outputs past the image's last row or column are dropped.
class WinogradOutputOp : public OpKernel {
 public:
  explicit WinogradOutputOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    Tiling tiling;
    const float* m;
    float* y;
    OP_REQUIRES_OK(context, image_from_transformed(context, &tiling, &m, &y));
    const int64_t channels = tiling.channels, plane = tiling.tiles() * channels;
    for_each_tile(context, tiling, 24, [&](int64_t item, int64_t i, int64_t j) {
      float dropped[2][kChannelBlock];  // where outputs past the image go
      const float* tile = m + tiling.tile(item, i, j);
      for (int64_t c0 = 0; c0 < channels; c0 += kChannelBlock) {
        const int64_t count = std::min(kChannelBlock, channels - c0);
        float rows[2][4][kChannelBlock];  // A^T m: [r][b]
        for (int b = 0; b < 4; ++b) {
          const float* __restrict__ m0 = tile + b * plane + c0;
          const float* __restrict__ m1 = m0 + 4 * plane;
          const float* __restrict__ m2 = m1 + 4 * plane;
          const float* __restrict__ m3 = m2 + 4 * plane;
          float* __restrict__ e0 = rows[0][b];
          float* __restrict__ e1 = rows[1][b];
          for (int64_t c = 0; c < count; ++c) {
            e0[c] = m0[c] + m1[c] + m2[c];
            e1[c] = m1[c] - m2[c] - m3[c];
          }
        }
        for (int r = 0; r < 2; ++r) {
          const int64_t h = 2 * i + r, w = 2 * j;
          const bool row_inside = h < tiling.height;
          const float* __restrict__ s0 = rows[r][0];
          const float* __restrict__ s1 = rows[r][1];
          const float* __restrict__ s2 = rows[r][2];
          const float* __restrict__ s3 = rows[r][3];
          float* __restrict__ y0 =
              row_inside ? y + tiling.pixel(item, h, w) + c0 : dropped[0];
          float* __restrict__ y1 =
              row_inside && w + 1 < tiling.width ? y0 + channels : dropped[1];
          for (int64_t c = 0; c < count; ++c) {
            y0[c] = s0[c] + s1[c] + s2[c];
            y1[c] = s1[c] - s2[c] - s3[c];
          }
        }
      }
    });
  }
};

// u = G g G^T per (in, out) pair of a 3x3 HWIO kernel g: g (3, 3, in, out) to
// u (16, in, out). With kAdjoint, its adjoint: dg = G^T du G, du (16, in, out) to
// dg (3, 3, in, out).
template <bool kAdjoint>
class WinogradKernelOp : public OpKernel {
 public:
  explicit WinogradKernelOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& in_tensor = context->input(0);
    const bool valid = kAdjoint ? in_tensor.dims() == 3 && in_tensor.dim_size(0) == kPositions
                                : in_tensor.dims() == 4 && in_tensor.dim_size(0) == 3 &&
                                      in_tensor.dim_size(1) == 3;
    OP_REQUIRES(context, valid,
                InvalidArgument("Winograd convolution: ",
                                kAdjoint ? "a transformed kernel gradient needs shape (16, in, "
                                           "out)"
                                         : "the kernel needs shape (3, 3, in, out)",
                                ", got ", in_tensor.shape().DebugString()));
    const int64_t inputs = in_tensor.dim_size(kAdjoint ? 1 : 2);
    const int64_t outputs = in_tensor.dim_size(kAdjoint ? 2 : 3);
    const int64_t pairs = inputs * outputs;
    const TensorShape shape = kAdjoint ? TensorShape({3, 3, inputs, outputs})
                                       : TensorShape({kPositions, inputs, outputs});
    Tensor* out_tensor;
    OP_REQUIRES_OK(context, context->allocate_output(0, shape, &out_tensor));
    const float* in = in_tensor.flat<float>().data();
    float* out = out_tensor->flat<float>().data();
    const int64_t blocks = (pairs + kChannelBlock - 1) / kChannelBlock;
    for_each_task(context, blocks, 48 * kChannelBlock, [&](int64_t first, int64_t end) {
      for (int64_t block = first; block < end; ++block) {
        const int64_t c0 = block * kChannelBlock, count = std::min(kChannelBlock, pairs - c0);
        if (kAdjoint) {
          adjoint(in + c0, out + c0, pairs, count);
        } else {
          forward(in + c0, out + c0, pairs, count);
        }
      }
    });
  }

 private:
  // G along one axis: three values to four.
  static void expand(const float* __restrict__ g0, const float* __restrict__ g1,
                     const float* __restrict__ g2, float* __restrict__ u0,
                     float* __restrict__ u1, float* __restrict__ u2, float* __restrict__ u3,
                     int64_t count) {
    for (int64_t c = 0; c < count; ++c) {
      u0[c] = g0[c];
      u1[c] = 0.5f * (g0[c] + g1[c] + g2[c]);
      u2[c] = 0.5f * (g0[c] - g1[c] + g2[c]);
      u3[c] = g2[c];
    }
  }

  // G^T along one axis: four values to three.
  static void contract(const float* __restrict__ u0, const float* __restrict__ u1,
                       const float* __restrict__ u2, const float* __restrict__ u3,
                       float* __restrict__ g0, float* __restrict__ g1, float* __restrict__ g2,
                       int64_t count) {
    for (int64_t c = 0; c < count; ++c) {
      g0[c] = u0[c] + 0.5f * (u1[c] + u2[c]);
      g1[c] = 0.5f * (u1[c] - u2[c]);
      g2[c] = 0.5f * (u1[c] + u2[c]) + u3[c];
    }
  }

  // g[p][q] at g + (3p + q) * pairs; u[a][b] at u + (4a + b) * pairs.
  static void forward(const float* g, float* u, int64_t pairs, int64_t count) {
    float rows[4][3][kChannelBlock];  // G g: [a][q]
    for (int q = 0; q < 3; ++q) {
      expand(g + q * pairs, g + (3 + q) * pairs, g + (6 + q) * pairs, rows[0][q], rows[1][q],
             rows[2][q], rows[3][q], count);
    }
    for (int a = 0; a < 4; ++a) {
      float* row = u + 4 * a * pairs;
      expand(rows[a][0], rows[a][1], rows[a][2], row, row + pairs, row + 2 * pairs,
             row + 3 * pairs, count);
    }
  }

  static void adjoint(const float* u, float* g, int64_t pairs, int64_t count) {
    float rows[3][4][kChannelBlock];  // G^T du: [p][b]
    for (int b = 0; b < 4; ++b) {
      contract(u + b * pairs, u + (4 + b) * pairs, u + (8 + b) * pairs, u + (12 + b) * pairs,
               rows[0][b], rows[1][b], rows[2][b], count);
    }
    for (int p = 0; p < 3; ++p) {
      float* row = g + 3 * p * pairs;
      contract(rows[p][0], rows[p][1], rows[p][2], rows[p][3], row, row + pairs,
               row + 2 * pairs, count);
    }
  }
};

}  // namespace
}  // namespace bitkeras

REGISTER_OP("BitkerasGroupNorm")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Attr("T: {float, bfloat16} = DT_FLOAT")
    .Attr("groups: int >= 1")
    .Attr("epsilon: float")
    .Attr("relu: bool = false")
    .Attr("pad: int >= 0 = 0")
    .Output("y: T")
    .Output("mean: float")
    .Output("inverse_std: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* context) {
      int groups, pad;
      TF_RETURN_IF_ERROR(context->GetAttr("groups", &groups));
      TF_RETURN_IF_ERROR(context->GetAttr("pad", &pad));
      ::tensorflow::shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(context->WithRankAtLeast(context->input(0), 2, &x));
      if (pad == 0) {
        context->set_output(0, x);
      } else {
        TF_RETURN_IF_ERROR(context->WithRank(x, 4, &x));
        ::tensorflow::shape_inference::DimensionHandle height, width;
        TF_RETURN_IF_ERROR(context->Add(context->Dim(x, 1), 2 * pad, &height));
        TF_RETURN_IF_ERROR(context->Add(context->Dim(x, 2), 2 * pad, &width));
        context->set_output(0, context->MakeShape({context->Dim(x, 0), height, width,
                                                   context->Dim(x, 3)}));
      }
      const auto statistics = context->MakeShape({context->Dim(x, 0), groups});
      context->set_output(1, statistics);
      context->set_output(2, statistics);
      return ::absl::OkStatus();
    });

REGISTER_OP("BitkerasGroupNormGrad")
    .Input("upstream: T")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("mean: float")
    .Input("inverse_std: float")
    .Input("residual: residuals * T")
    .Attr("T: {float, bfloat16} = DT_FLOAT")
    .Attr("groups: int >= 1")
    .Attr("relu: bool = false")
    .Attr("pad: int >= 0 = 0")
    .Attr("residuals: int >= 0 = 0")
    .Output("dx: T")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* context) {
      context->set_output(0, context->input(1));
      context->set_output(1, context->input(2));
      context->set_output(2, context->input(2));
      return ::absl::OkStatus();
    });

#define BITKERAS_REGISTER_GROUP_NORM(T)                                                \
  REGISTER_KERNEL_BUILDER(                                                             \
      Name("BitkerasGroupNorm").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      bitkeras::GroupNormOp<T>);                                                       \
  REGISTER_KERNEL_BUILDER(Name("BitkerasGroupNormGrad")                                \
                              .Device(::tensorflow::DEVICE_CPU)                        \
                              .TypeConstraint<T>("T"),                                 \
                          bitkeras::GroupNormGradOp<T>);
BITKERAS_REGISTER_GROUP_NORM(float);
BITKERAS_REGISTER_GROUP_NORM(::Eigen::bfloat16);
#undef BITKERAS_REGISTER_GROUP_NORM

REGISTER_OP("BitkerasStandardize")
    .Input("kernel: float")
    .Attr("epsilon: float")
    .Output("standardized: float")
    .Output("inverse_std: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* context) {
      ::tensorflow::shape_inference::ShapeHandle kernel;
      TF_RETURN_IF_ERROR(context->WithRankAtLeast(context->input(0), 1, &kernel));
      context->set_output(0, kernel);
      context->set_output(1, context->Vector(context->Dim(kernel, -1)));
      return ::absl::OkStatus();
    });

REGISTER_OP("BitkerasStandardizeGrad")
    .Input("upstream: float")
    .Input("standardized: float")
    .Input("inverse_std: float")
    .Output("dkernel: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* context) {
      context->set_output(0, context->input(1));
      return ::absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("BitkerasStandardize").Device(::tensorflow::DEVICE_CPU),
                        bitkeras::StandardizeOp);
REGISTER_KERNEL_BUILDER(Name("BitkerasStandardizeGrad").Device(::tensorflow::DEVICE_CPU),
                        bitkeras::StandardizeGradOp);

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// (16, tiles, channels) for an image shape (batch, height, width, channels).
::absl::Status transformed_shape(InferenceContext* context, ShapeHandle image) {
  TF_RETURN_IF_ERROR(context->WithRank(image, 4, &image));
  DimensionHandle tiles = context->Dim(image, 0);
  for (int axis = 1; axis <= 2; ++axis) {
    const DimensionHandle size = context->Dim(image, axis);
    DimensionHandle count = context->UnknownDim();
    if (context->ValueKnown(size)) count = context->MakeDim((context->Value(size) + 1) / 2);
    TF_RETURN_IF_ERROR(context->Multiply(tiles, count, &tiles));
  }
  context->set_output(0, context->MakeShape({context->MakeDim(16), tiles,
                                             context->Dim(image, 3)}));
  return ::absl::OkStatus();
}

// (batch, height, width) from input 1, channels from input 0 (16, tiles, channels).
::absl::Status image_shape(InferenceContext* context) {
  ShapeHandle sizes;
  TF_RETURN_IF_ERROR(context->MakeShapeFromShapeTensor(1, &sizes));
  TF_RETURN_IF_ERROR(context->WithRank(sizes, 3, &sizes));
  ShapeHandle transformed;
  TF_RETURN_IF_ERROR(context->WithRank(context->input(0), 3, &transformed));
  ShapeHandle image;
  TF_RETURN_IF_ERROR(context->Concatenate(
      sizes, context->Vector(context->Dim(transformed, 2)), &image));
  context->set_output(0, image);
  return ::absl::OkStatus();
}

}  // namespace

REGISTER_OP("BitkerasWinogradInput")
    .Input("x: float")
    .Output("v: float")
    .SetShapeFn([](InferenceContext* context) {
      return transformed_shape(context, context->input(0));
    });

REGISTER_OP("BitkerasWinogradInputGrad")
    .Input("dv: float")
    .Input("shape: int32")
    .Output("dx: float")
    .SetShapeFn(image_shape);

REGISTER_OP("BitkerasWinogradOutput")
    .Input("m: float")
    .Input("shape: int32")
    .Output("y: float")
    .SetShapeFn(image_shape);

REGISTER_OP("BitkerasWinogradOutputGrad")
    .Input("dy: float")
    .Output("dm: float")
    .SetShapeFn([](InferenceContext* context) {
      return transformed_shape(context, context->input(0));
    });

REGISTER_OP("BitkerasWinogradKernel")
    .Input("g: float")
    .Output("u: float")
    .SetShapeFn([](InferenceContext* context) {
      ShapeHandle kernel;
      TF_RETURN_IF_ERROR(context->WithRank(context->input(0), 4, &kernel));
      context->set_output(0, context->MakeShape({context->MakeDim(16), context->Dim(kernel, 2),
                                                 context->Dim(kernel, 3)}));
      return ::absl::OkStatus();
    });

REGISTER_OP("BitkerasWinogradKernelGrad")
    .Input("du: float")
    .Output("dg: float")
    .SetShapeFn([](InferenceContext* context) {
      ShapeHandle transformed;
      TF_RETURN_IF_ERROR(context->WithRank(context->input(0), 3, &transformed));
      context->set_output(0, context->MakeShape({context->MakeDim(3), context->MakeDim(3),
                                                 context->Dim(transformed, 1),
                                                 context->Dim(transformed, 2)}));
      return ::absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("BitkerasWinogradInput").Device(::tensorflow::DEVICE_CPU),
                        bitkeras::ImageTilesOp<bitkeras::InputTransform>);
REGISTER_KERNEL_BUILDER(Name("BitkerasWinogradInputGrad")
                            .Device(::tensorflow::DEVICE_CPU)
                            .HostMemory("shape"),
                        bitkeras::WinogradInputGradOp);
REGISTER_KERNEL_BUILDER(Name("BitkerasWinogradOutput")
                            .Device(::tensorflow::DEVICE_CPU)
                            .HostMemory("shape"),
                        bitkeras::WinogradOutputOp);
REGISTER_KERNEL_BUILDER(Name("BitkerasWinogradOutputGrad").Device(::tensorflow::DEVICE_CPU),
                        bitkeras::ImageTilesOp<bitkeras::OutputGradTransform>);
REGISTER_KERNEL_BUILDER(Name("BitkerasWinogradKernel").Device(::tensorflow::DEVICE_CPU),
                        bitkeras::WinogradKernelOp<false>);
REGISTER_KERNEL_BUILDER(Name("BitkerasWinogradKernelGrad").Device(::tensorflow::DEVICE_CPU),
                        bitkeras::WinogradKernelOp<true>);
