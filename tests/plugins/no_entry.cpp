// A shared library that is not a Strata plugin: it exports no `strata_plugin`.
extern "C" __attribute__((visibility("default"))) int not_a_strata_plugin() { return 42; }
