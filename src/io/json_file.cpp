#include "io/json_file.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace lmx::io {

std::string read_text_file(const std::filesystem::path& path, std::string_view where) {
  std::ifstream is(path, std::ios::binary);
  if (!is) fail(where, path.string(), ": cannot open the file (check that it exists and is readable)");
  std::ostringstream ss;
  ss << is.rdbuf();
  if (is.bad()) fail(where, path.string(), ": reading the file failed");
  return ss.str();
}

nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view where) {
  return parse_json_text(read_text_file(path, where), path.string(), where);
}

template <class Json>
Json parse_json_text(std::string_view text, const std::string& display_name, std::string_view where) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    fail(where, display_name, ": malformed JSON: ", json_error_text(e), " (byte ", e.byte,
         "); fix or re-download the file");
  } catch (const nlohmann::json::exception& e) {  // e.g. a number too large for a double
    fail(where, display_name, ": malformed JSON: ", json_error_text(e), "; fix or re-download the file");
  }
}

template nlohmann::json parse_json_text<nlohmann::json>(std::string_view, const std::string&, std::string_view);
template nlohmann::ordered_json parse_json_text<nlohmann::ordered_json>(std::string_view, const std::string&,
                                                                         std::string_view);

std::string_view json_error_text(const nlohmann::json::exception& e) {
  // what() reads "[json.exception.parse_error.101] parse error at line 3, column 7: ...".
  std::string_view msg = e.what();
  if (msg.starts_with("[json.exception."))
    if (auto p = msg.find("] "); p != std::string_view::npos) msg.remove_prefix(p + 2);
  return msg;
}

std::string json_kind(const nlohmann::json& v) {
  if (v.is_number_integer()) return v.is_number_unsigned() || v.get<int64_t>() >= 0 ? "integer" : "negative integer";
  if (v.is_number_float()) return "number " + v.dump();
  return v.type_name();
}

}  // namespace lmx::io
