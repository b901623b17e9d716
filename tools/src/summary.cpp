#include "strata/tools/summary.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "strata/config.hpp"
#include "strata/graph.hpp"
#include "strata/layer.hpp"
#include "strata/ops.hpp"
#include "strata/training/experiment.hpp"
#include "strata/training/run_data.hpp"

namespace strata {

namespace {

constexpr int64_t kFloatBytes = 4;

struct Field {
  std::array<int64_t, 2> receptive_field{1, 1};
  std::array<int64_t, 2> jump{1, 1};
};

// The receptive field of a layer's output from those of its inputs.
Field propagate(const Layer& layer, const std::vector<Field>& inputs, const std::vector<Shape>& shapes) {
  // Every input widens the receptive field (a squeeze-and-excitation gate sees the whole image),
  // but the jump (input pixels between neighbouring outputs) comes from the inputs laid out like
  // the output: a broadcast [C, 1, 1] gate has no spacing of its own.
  const Shape& output = layer.output_shape();
  const auto spatially_like_output = [&](const Shape& shape) {
    return output.rank() == 3 && shape.rank() == 3 && shape[1] == output[1] &&
           shape[2] == output[2];
  };
  const bool any_like_output =
      std::any_of(shapes.begin(), shapes.end(), spatially_like_output);
  Field in;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const bool sets_jump = !any_like_output || spatially_like_output(shapes[i]);
    for (int axis = 0; axis < 2; ++axis) {
      in.receptive_field[axis] =
          std::max(in.receptive_field[axis], inputs[i].receptive_field[axis]);
      if (sets_jump) in.jump[axis] = std::max(in.jump[axis], inputs[i].jump[axis]);
    }
  }
  const Window window = layer.window();
  Field out = in;
  for (int axis = 0; axis < 2; ++axis) {
    if (window.global) {
      // Spans the whole input: its extent on this axis, for image inputs.
      int64_t extent = 1;
      for (const Shape& shape : shapes) {
        if (shape.rank() == 3) extent = std::max(extent, shape[1 + axis]);
      }
      out.receptive_field[axis] = in.receptive_field[axis] + (extent - 1) * in.jump[axis];
      out.jump[axis] = in.jump[axis] * extent;
    } else {
      const int64_t effective = dilated_extent(window.kernel[axis], window.dilation[axis]);
      out.receptive_field[axis] = in.receptive_field[axis] + (effective - 1) * in.jump[axis];
      out.jump[axis] = in.jump[axis] * window.stride[axis];
    }
  }
  return out;
}

std::string with_commas(int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return value < 0 ? "-" + out : out;
}

std::string bytes_text(int64_t bytes) {
  const double value = static_cast<double>(bytes);
  if (bytes >= (int64_t{1} << 30)) return fmt::format("{:.2f} GiB", value / (1 << 30));
  if (bytes >= (int64_t{1} << 20)) return fmt::format("{:.1f} MiB", value / (1 << 20));
  if (bytes >= (int64_t{1} << 10)) return fmt::format("{:.1f} KiB", value / (1 << 10));
  return fmt::format("{} B", bytes);
}

std::string short_count(int64_t value) {
  const double v = static_cast<double>(value);
  if (value >= 1000000000) return fmt::format("{:.3f}G", v / 1e9);
  if (value >= 1000000) return fmt::format("{:.1f}M", v / 1e6);
  if (value >= 1000) return fmt::format("{:.1f}K", v / 1e3);
  return std::to_string(value);
}

std::string field_text(const std::array<int64_t, 2>& value) {
  if (value[0] == value[1]) return std::to_string(value[0]);
  return fmt::format("{}x{}", value[0], value[1]);
}

// Training memory at `batch` from the graph's plan: the outputs training keeps and shares, the
// gradient arena, and parameters with gradients and one optimizer slot.
void set_training_memory(ModelSummary& summary, const Graph& graph, int64_t batch) {
  const Graph::Memory planned = graph.memory(batch, OutputRetention::kBackward);
  summary.batch_size = batch;
  summary.output_bytes = planned.outputs;
  summary.gradient_bytes = planned.gradients;
  summary.recompute = graph.recomputation();
  summary.training_bytes = planned.outputs + planned.gradients + 3 * summary.parameter_bytes;
}

}  // namespace

ModelSummary summarize(Graph& graph, bool expand, int64_t batch_size) {
  ModelSummary summary;
  summary.input = graph.input_shape();

  std::vector<SummaryRow> layer_rows;
  std::vector<Field> fields(graph.size());
  for (std::size_t i = 0; i < graph.size(); ++i) {
    Layer& layer = graph.layer(i);
    SummaryRow row;
    row.name = layer.name();
    row.type = std::string(layer.type());
    row.block = graph.block_of(i) >= 0 ? graph.blocks()[graph.block_of(i)].name : "";
    row.inputs = graph.input_names(i);
    row.output = layer.output_shape();
    row.activations = row.output.numel();
    row.activation_bytes = row.activations * kFloatBytes;
    for (Param* param : layer.params()) row.parameters += param->value.numel();
    row.multiply_adds = layer.multiply_adds();

    std::vector<Field> input_fields;
    for (const std::string& input : row.inputs) {
      const int producer = input == "input" ? -1 : graph.index_of(input);
      input_fields.push_back(producer < 0 ? Field{} : fields[producer]);
    }
    fields[i] = propagate(layer, input_fields, graph.input_shapes(i));
    row.receptive_field = fields[i].receptive_field;
    row.jump = fields[i].jump;

    summary.parameters += row.parameters;
    summary.activations += row.activations;
    summary.multiply_adds += row.multiply_adds;
    layer_rows.push_back(std::move(row));
  }

  if (expand) {
    summary.rows = std::move(layer_rows);
  } else {
    for (std::size_t i = 0; i < layer_rows.size();) {
      const int block = graph.block_of(i);
      if (block < 0) {
        summary.rows.push_back(std::move(layer_rows[i]));
        ++i;
        continue;
      }
      const Graph::BlockInfo& info = graph.blocks()[block];
      SummaryRow row;
      row.name = info.name;
      row.type = info.type;
      row.repeat = info.repeat;
      row.layers = info.end - info.first;
      row.inputs = layer_rows[info.first].inputs;  // the first part's inputs: the block's input
      const SummaryRow& last = layer_rows[info.end - 1];
      row.output = last.output;
      row.receptive_field = last.receptive_field;
      row.jump = last.jump;
      for (int j = info.first; j < info.end; ++j) {
        row.activations += layer_rows[j].activations;
        row.activation_bytes += layer_rows[j].activation_bytes;
        row.parameters += layer_rows[j].parameters;
        row.multiply_adds += layer_rows[j].multiply_adds;
      }
      summary.rows.push_back(std::move(row));
      i = static_cast<std::size_t>(info.end);
    }
  }

  summary.activations += summary.input.numel();
  summary.activation_bytes = summary.activations * kFloatBytes;
  summary.parameter_bytes = summary.parameters * kFloatBytes;
  set_training_memory(summary, graph, batch_size);
  return summary;
}

ModelSummary summarize_experiment(const Config& experiment, const Registries& registries, bool expand) {
  // The model's shapes only: data, optimizer and the rest do not matter here (no data file is read).
  const Experiment run = Experiment::read(experiment, registries, Experiment::Scope::shapes);
  const int64_t batch_size = run.train.batch_size > 0 ? run.train.batch_size : 1;
  return summarize(*run.graph, expand, batch_size);
}

void measure_run_memory(const Config& experiment, const Registries& registries,
                        ModelSummary& summary) {
  const Experiment run = Experiment::read(experiment, registries, Experiment::Scope::training);
  const int64_t before_data = resident_bytes();
  const RunData data = open_run_data(run, registries);
  summary.data_bytes = std::max<int64_t>(0, resident_bytes() - before_data);
  // The parameters are allocated and counted in the resident set already, as in a run.
  summary.process_bytes = before_data - summary.parameter_bytes;
  // A batch holds at most the training images there are (a small train_limit).
  if (data.train.size() > 0 && data.train.size() < summary.batch_size) {
    set_training_memory(summary, *run.graph, data.train.size());
  }
  summary.run_bytes = summary.process_bytes + summary.data_bytes + summary.training_bytes;
}

std::string format_summary(const ModelSummary& summary) {
  std::vector<std::array<std::string, 8>> cells;
  cells.push_back({"layer", "type", "output", "activations", "memory", "parameters", "mult-adds",
                   "RF (jump)"});
  cells.push_back({"input", "", summary.input.str(), with_commas(summary.input.numel()),
                   bytes_text(summary.input.numel() * kFloatBytes), "0", "0", "1 (1)"});
  for (const SummaryRow& row : summary.rows) {
    std::string type = row.repeat > 1 ? fmt::format("{} x{}", row.type, row.repeat) : row.type;
    cells.push_back({row.name, type, row.output.str(), with_commas(row.activations),
                     bytes_text(row.activation_bytes), with_commas(row.parameters),
                     short_count(row.multiply_adds),
                     fmt::format("{} ({})", field_text(row.receptive_field), field_text(row.jump))});
  }
  std::array<std::size_t, 8> width{};
  for (const auto& line : cells) {
    for (std::size_t c = 0; c < line.size(); ++c) width[c] = std::max(width[c], line[c].size());
  }
  std::string out;
  for (std::size_t r = 0; r < cells.size(); ++r) {
    std::string line;
    for (std::size_t c = 0; c < cells[r].size(); ++c) {
      const bool numeric = c >= 3;
      line += numeric ? fmt::format("{:>{}}", cells[r][c], width[c]) : fmt::format("{:<{}}", cells[r][c], width[c]);
      if (c + 1 < cells[r].size()) line += "  ";
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  out += fmt::format("parameters:         {} ({})\n", with_commas(summary.parameters),
                     bytes_text(summary.parameter_bytes));
  out += fmt::format("activations:        {} per image ({}, forward: input and every layer output)\n",
                     with_commas(summary.activations), bytes_text(summary.activation_bytes));
  if (summary.recompute) {
    out += fmt::format(
        "training memory:    about {} at batch size {}: layer outputs and their gradients {} "
        "(one arena, recomputing outputs in backward), parameters with gradients and momentum "
        "{}\n",
        bytes_text(summary.training_bytes), summary.batch_size, bytes_text(summary.output_bytes),
        bytes_text(3 * summary.parameter_bytes));
  } else {
    out += fmt::format(
        "training memory:    about {} at batch size {}: layer outputs {}, their gradients "
        "{} (planned by lifetime), parameters with gradients and momentum {}\n",
        bytes_text(summary.training_bytes), summary.batch_size, bytes_text(summary.output_bytes),
        bytes_text(summary.gradient_bytes), bytes_text(3 * summary.parameter_bytes));
  }
  if (summary.run_bytes >= 0) {
    out += fmt::format(
        "run memory:         about {} at its peak: the training memory above, data {} "
        "(measured when opened), process {} (code and libraries, measured)\n",
        bytes_text(summary.run_bytes), bytes_text(summary.data_bytes),
        bytes_text(summary.process_bytes));
  }
  out += fmt::format("multiply-adds:      {} per image ({})\n", with_commas(summary.multiply_adds),
                     short_count(summary.multiply_adds));
  return out;
}

std::string summary_json(const ModelSummary& summary) {
  using nlohmann::json;
  json rows = json::array();
  for (const SummaryRow& row : summary.rows) {
    json item = {{"name", row.name},
                 {"type", row.type},
                 {"inputs", row.inputs},
                 {"output", row.output.dims()},
                 {"activations", row.activations},
                 {"activation_bytes", row.activation_bytes},
                 {"parameters", row.parameters},
                 {"multiply_adds", row.multiply_adds},
                 {"receptive_field", row.receptive_field},
                 {"jump", row.jump}};
    if (row.repeat > 0) {
      item["repeat"] = row.repeat;
      item["layers"] = row.layers;
    }
    if (!row.block.empty()) item["block"] = row.block;
    rows.push_back(std::move(item));
  }
  json out = {{"input", summary.input.dims()},
              {"rows", rows},
              {"totals",
               {{"parameters", summary.parameters},
                {"parameter_bytes", summary.parameter_bytes},
                {"activations_per_image", summary.activations},
                {"activation_bytes_per_image", summary.activation_bytes},
                {"batch_size", summary.batch_size},
                {"training_bytes_estimate", summary.training_bytes},
                {"training_output_bytes", summary.output_bytes},
                {"training_gradient_bytes", summary.gradient_bytes},
                {"recompute", summary.recompute},
                {"multiply_adds_per_image", summary.multiply_adds}}}};
  if (summary.run_bytes >= 0) {
    out["totals"]["run_bytes_estimate"] = summary.run_bytes;
    out["totals"]["data_bytes"] = summary.data_bytes;
    out["totals"]["process_bytes"] = summary.process_bytes;
  }
  return out.dump(2) + "\n";
}

}  // namespace strata
