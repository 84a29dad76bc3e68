// Reading small JSON files (config.json, index files) with errors that name the file.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace lmx::io {

// The whole file as bytes; errors are "[<where>] <path>: ...".
std::string read_text_file(const std::filesystem::path& path, std::string_view where);

// Reads and parses `path`. Errors are "[<where>] <path>: ..."; a syntax error gives the
// line, column and byte of the problem.
nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view where);
// Json: nlohmann::json, or nlohmann::ordered_json where the keys' order matters (a chat's
// tools and call arguments, which a template writes out as they came).
template <class Json = nlohmann::json>
Json parse_json_text(std::string_view text, const std::string& display_name, std::string_view where);

// An nlohmann exception's message without the library's "[json.exception...] " tag.
std::string_view json_error_text(const nlohmann::json::exception& e);

// "string", "number", ... as a user would name them in an error message.
std::string json_kind(const nlohmann::json& v);

}  // namespace lmx::io
