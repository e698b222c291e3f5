// GroupNorm for channels-last float32 activations as two TensorFlow CPU ops:
// the forward pass and its gradient, each one kernel.
//
// TensorFlow runs the composed GroupNorm (`kernels.py`) as a dozen ops, each a
// pass over the activations in memory; here the forward reads them three times
// and writes once, the gradient reads twice and writes once, one batch item at
// a time (an item's activations stay in the core's cache between the passes).
// bitkeras builds this file on first use with the machine's C++ compiler
// (`native.py`); the arithmetic is that of `kernels._group_norm` and
// `kernels._group_norm_closed_form`.
//
// Layout: x is (batch, ..., channels), read as (batch, pixels, channels);
// channel c belongs to group c / (channels / groups). Statistics per (item,
// group) over the group's pixels and channels: sums per channel first (in
// double, along the contiguous channel axis, so they vectorize), then per group.

#include <cmath>
#include <cstdint>
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
};

// The layout of x, checked against gamma's size and the group count.
::absl::Status layout_of(const Tensor& x, int64_t parameters, int groups, Layout* layout) {
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
  if (parameters != layout->channels) {
    return InvalidArgument("GroupNorm: gamma and beta need one value per channel (",
                           layout->channels, "), got ", parameters);
  }
  layout->pixels = layout->items * layout->channels == 0
                       ? 0
                       : x.NumElements() / (layout->items * layout->channels);
  layout->groups = groups;
  layout->per_group = layout->channels / groups;
  return ::absl::OkStatus();
}

// Runs work(first_item, end_item) over the batch on TensorFlow's CPU threads.
template <typename Work>
void for_each_item(OpKernelContext* context, const Layout& layout, int passes, Work work) {
  const int64_t cost = passes * layout.pixels * layout.channels;
  context->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(
      layout.items, cost, work);
}

// sums[c] += sum over pixels of row[c] (rows of `channels` values).
void add_channel_sums(const float* __restrict__ rows, const Layout& layout,
                      double* __restrict__ sums) {
  for (int64_t pixel = 0; pixel < layout.pixels; ++pixel) {
    const float* __restrict__ row = rows + pixel * layout.channels;
    for (int64_t c = 0; c < layout.channels; ++c) sums[c] += row[c];
  }
}

// Sum over each group's channels of weights[c] * sums[c], one value per group.
double group_sum(const double* sums, const float* weights, const Layout& layout, int64_t group) {
  double total = 0;
  for (int64_t c = group * layout.per_group; c < (group + 1) * layout.per_group; ++c) {
    total += (weights ? weights[c] : 1.0f) * sums[c];
  }
  return total;
}

class GroupNormOp : public OpKernel {
 public:
  explicit GroupNormOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x_tensor = context->input(0);
    const Tensor& gamma_tensor = context->input(1);
    const Tensor& beta_tensor = context->input(2);
    OP_REQUIRES(context, gamma_tensor.NumElements() == beta_tensor.NumElements(),
                InvalidArgument("GroupNorm: gamma and beta differ in size"));
    Layout layout;
    OP_REQUIRES_OK(context,
                   layout_of(x_tensor, gamma_tensor.NumElements(), groups_, &layout));
    Tensor *y_tensor, *mean_tensor, *inverse_std_tensor;
    const TensorShape statistics_shape({layout.items, layout.groups});
    OP_REQUIRES_OK(context, context->allocate_output(0, x_tensor.shape(), &y_tensor));
    OP_REQUIRES_OK(context, context->allocate_output(1, statistics_shape, &mean_tensor));
    OP_REQUIRES_OK(context,
                   context->allocate_output(2, statistics_shape, &inverse_std_tensor));
    const float* x = x_tensor.flat<float>().data();
    const float* gamma = gamma_tensor.flat<float>().data();
    const float* beta = beta_tensor.flat<float>().data();
    float* y = y_tensor->flat<float>().data();
    float* means = mean_tensor->flat<float>().data();
    float* inverse_stds = inverse_std_tensor->flat<float>().data();
    const double count = static_cast<double>(layout.pixels) * layout.per_group;
    const float epsilon = epsilon_;

    for_each_item(context, layout, 4, [&](int64_t first, int64_t end) {
      std::vector<double> sums(layout.channels);
      std::vector<float> mean(layout.channels), scale(layout.channels);
      for (int64_t item = first; item < end; ++item) {
        const int64_t offset = item * layout.pixels * layout.channels;
        const float* rows = x + offset;
        std::fill(sums.begin(), sums.end(), 0.0);
        add_channel_sums(rows, layout, sums.data());
        for (int64_t group = 0; group < layout.groups; ++group) {
          const float group_mean = group_sum(sums.data(), nullptr, layout, group) / count;
          means[item * layout.groups + group] = group_mean;
          std::fill_n(mean.begin() + group * layout.per_group, layout.per_group, group_mean);
        }
        // The variance from the centred values (two passes): no cancellation.
        std::fill(sums.begin(), sums.end(), 0.0);
        for (int64_t pixel = 0; pixel < layout.pixels; ++pixel) {
          const float* __restrict__ row = rows + pixel * layout.channels;
          for (int64_t c = 0; c < layout.channels; ++c) {
            const float centered = row[c] - mean[c];
            sums[c] += centered * centered;
          }
        }
        for (int64_t group = 0; group < layout.groups; ++group) {
          const float variance = group_sum(sums.data(), nullptr, layout, group) / count;
          const float inverse_std = 1.0f / std::sqrt(variance + epsilon);
          inverse_stds[item * layout.groups + group] = inverse_std;
          for (int64_t c = group * layout.per_group; c < (group + 1) * layout.per_group; ++c) {
            scale[c] = inverse_std * gamma[c];
          }
        }
        float* outputs = y + offset;
        for (int64_t pixel = 0; pixel < layout.pixels; ++pixel) {
          const float* __restrict__ row = rows + pixel * layout.channels;
          float* __restrict__ out = outputs + pixel * layout.channels;
          for (int64_t c = 0; c < layout.channels; ++c) {
            out[c] = (row[c] - mean[c]) * scale[c] + beta[c];
          }
        }
      }
    });
  }

 private:
  int groups_;
  float epsilon_;
};

// With xhat = (x - mean) * r per group and g = upstream * gamma:
// dx = r * (g - mean_group(g) - xhat * mean_group(g * xhat)),
// dgamma = sum over items and pixels of upstream * xhat, dbeta = that of upstream.
class GroupNormGradOp : public OpKernel {
 public:
  explicit GroupNormGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("groups", &groups_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& upstream_tensor = context->input(0);
    const Tensor& x_tensor = context->input(1);
    const Tensor& gamma_tensor = context->input(2);
    Layout layout;
    OP_REQUIRES_OK(context,
                   layout_of(x_tensor, gamma_tensor.NumElements(), groups_, &layout));
    OP_REQUIRES(context, upstream_tensor.shape() == x_tensor.shape(),
                InvalidArgument("GroupNorm gradient: upstream shape ",
                                upstream_tensor.shape().DebugString(), " differs from x's ",
                                x_tensor.shape().DebugString()));
    const TensorShape statistics_shape({layout.items, layout.groups});
    OP_REQUIRES(context,
                context->input(3).shape() == statistics_shape &&
                    context->input(4).shape() == statistics_shape,
                InvalidArgument("GroupNorm gradient: mean and inverse_std need shape ",
                                statistics_shape.DebugString()));
    Tensor *dx_tensor, *dgamma_tensor, *dbeta_tensor;
    OP_REQUIRES_OK(context, context->allocate_output(0, x_tensor.shape(), &dx_tensor));
    OP_REQUIRES_OK(context, context->allocate_output(1, gamma_tensor.shape(), &dgamma_tensor));
    OP_REQUIRES_OK(context, context->allocate_output(2, gamma_tensor.shape(), &dbeta_tensor));
    const float* upstream = upstream_tensor.flat<float>().data();
    const float* x = x_tensor.flat<float>().data();
    const float* gamma = gamma_tensor.flat<float>().data();
    const float* means = context->input(3).flat<float>().data();
    const float* inverse_stds = context->input(4).flat<float>().data();
    float* dx = dx_tensor->flat<float>().data();
    // Per item and channel: sum of upstream, and of upstream * (x - mean).
    std::vector<double> upstream_sums(layout.items * layout.channels, 0.0);
    std::vector<double> centered_sums(layout.items * layout.channels, 0.0);
    const double count = static_cast<double>(layout.pixels) * layout.per_group;

    for_each_item(context, layout, 5, [&](int64_t first, int64_t end) {
      std::vector<float> mean(layout.channels), a(layout.channels), b(layout.channels),
          c0(layout.channels);
      for (int64_t item = first; item < end; ++item) {
        const int64_t offset = item * layout.pixels * layout.channels;
        const float* rows = x + offset;
        const float* gradients = upstream + offset;
        double* __restrict__ sums = upstream_sums.data() + item * layout.channels;
        double* __restrict__ products = centered_sums.data() + item * layout.channels;
        for (int64_t c = 0; c < layout.channels; ++c) {
          mean[c] = means[item * layout.groups + c / layout.per_group];
        }
        for (int64_t pixel = 0; pixel < layout.pixels; ++pixel) {
          const float* __restrict__ row = rows + pixel * layout.channels;
          const float* __restrict__ up = gradients + pixel * layout.channels;
          for (int64_t c = 0; c < layout.channels; ++c) {
            sums[c] += up[c];
            products[c] += up[c] * (row[c] - mean[c]);
          }
        }
        // dx = up * (r * gamma) - (x - mean) * (r^3 * mean_group(g * (x - mean)))
        //      - r * mean_group(g).
        for (int64_t group = 0; group < layout.groups; ++group) {
          const double r = inverse_stds[item * layout.groups + group];
          const double mean_term = group_sum(sums, gamma, layout, group) / count;
          const double centered_term = group_sum(products, gamma, layout, group) / count;
          for (int64_t c = group * layout.per_group; c < (group + 1) * layout.per_group; ++c) {
            a[c] = static_cast<float>(r * gamma[c]);
            b[c] = static_cast<float>(r * r * r * centered_term);
            c0[c] = static_cast<float>(r * mean_term);
          }
        }
        float* outputs = dx + offset;
        for (int64_t pixel = 0; pixel < layout.pixels; ++pixel) {
          const float* __restrict__ row = rows + pixel * layout.channels;
          const float* __restrict__ up = gradients + pixel * layout.channels;
          float* __restrict__ out = outputs + pixel * layout.channels;
          for (int64_t c = 0; c < layout.channels; ++c) {
            out[c] = up[c] * a[c] - (row[c] - mean[c]) * b[c] - c0[c];
          }
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
};

}  // namespace
}  // namespace bitkeras

REGISTER_OP("BitkerasGroupNorm")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Attr("groups: int >= 1")
    .Attr("epsilon: float")
    .Output("y: float")
    .Output("mean: float")
    .Output("inverse_std: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* context) {
      int groups;
      TF_RETURN_IF_ERROR(context->GetAttr("groups", &groups));
      context->set_output(0, context->input(0));
      ::tensorflow::shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(context->WithRankAtLeast(context->input(0), 2, &x));
      const auto statistics = context->MakeShape({context->Dim(x, 0), groups});
      context->set_output(1, statistics);
      context->set_output(2, statistics);
      return ::absl::OkStatus();
    });

REGISTER_OP("BitkerasGroupNormGrad")
    .Input("upstream: float")
    .Input("x: float")
    .Input("gamma: float")
    .Input("mean: float")
    .Input("inverse_std: float")
    .Attr("groups: int >= 1")
    .Output("dx: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* context) {
      context->set_output(0, context->input(1));
      context->set_output(1, context->input(2));
      context->set_output(2, context->input(2));
      return ::absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("BitkerasGroupNorm").Device(::tensorflow::DEVICE_CPU),
                        bitkeras::GroupNormOp);
REGISTER_KERNEL_BUILDER(Name("BitkerasGroupNormGrad").Device(::tensorflow::DEVICE_CPU),
                        bitkeras::GroupNormGradOp);
