#pragma once
// JsonConfig: lets a CLI11 program read `--config FILE` as JSON, where every
// flag has a key of the same name: {"pool-size": "4GiB", "listen":
// "0.0.0.0:7400", "standalone": true}. Flags given on the command line win.
// Header-only; for the mains of kvpool's programs.

#include <istream>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace kvpool {

class JsonConfig : public CLI::Config {
 public:
  std::string to_config(const CLI::App* app, bool default_also, bool /*write_description*/,
                        std::string /*prefix*/) const override {
    nlohmann::json out = nlohmann::json::object();
    for (const CLI::Option* opt : app->get_options()) {
      if (opt->get_lnames().empty() || opt->get_configurable() == false) continue;
      const std::string& name = opt->get_lnames().front();
      if (name == "help" || name == "config") continue;
      std::vector<std::string> results = opt->results();
      if (results.empty() && default_also) results = {opt->get_default_str()};
      if (results.empty()) continue;
      out[name] = results.size() == 1 ? nlohmann::json(results[0]) : nlohmann::json(results);
    }
    return out.dump(2);
  }

  // Throws CLI::ConversionError (reported by CLI11 like any bad flag) for a
  // file that is not a JSON object of scalars or arrays of scalars.
  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    std::stringstream text;
    text << input.rdbuf();
    auto doc = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded() || !doc.is_object()) {
      throw CLI::ConversionError("--config: not a JSON object");
    }
    std::vector<CLI::ConfigItem> items;
    for (auto it = doc.begin(); it != doc.end(); ++it) {
      CLI::ConfigItem item;
      item.name = it.key();
      auto scalar = [&](const nlohmann::json& v) -> std::string {
        if (v.is_string()) return v.get<std::string>();
        if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
        if (v.is_number()) return v.dump();
        throw CLI::ConversionError("--config: key '" + it.key() + "' must be a string, number or boolean");
      };
      if (it->is_array()) {
        for (const auto& v : *it) item.inputs.push_back(scalar(v));
      } else {
        item.inputs.push_back(scalar(*it));
      }
      items.push_back(std::move(item));
    }
    return items;
  }
};

}  // namespace kvpool
