// config_origin.hpp (internal to the core): naming the values the program itself sets.
//
// Config::set() names the source of its value "--set path=value", which is right for the user's
// own --set and wrong for a value `strata search` drew or chose: an error in it would quote a
// --set the user never typed. While a SetOrigin lives, set() calls on this thread name their
// values `origin` instead ("search.space.optimizer.lr (exp.yaml:30:7): drawn value 1e+39"), with
// no line or column of their own. Kept out of config.hpp, which every plugin compiles against.
#pragma once

#include <string>

namespace strata {

class SetOrigin {
 public:
  explicit SetOrigin(std::string origin);
  ~SetOrigin();
  SetOrigin(const SetOrigin&) = delete;
  SetOrigin& operator=(const SetOrigin&) = delete;

  // The innermost live origin on this thread, or nullptr.
  static const std::string* current();

 private:
  std::string origin_;
  const SetOrigin* previous_;
};

}  // namespace strata
