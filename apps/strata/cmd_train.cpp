// strata train EXP.yaml [--set key.path=value]... [--out DIR] [--overwrite | --resume [--force]
//   [--allow-nonfinite]] [--weights CKPT [--weights-partial]] [--progress MODE] [--threads N]
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "cli.hpp"
#include "strata/error.hpp"
#include "strata/training/trainer.hpp"

namespace strata::cli {

namespace {

std::atomic<bool> stop_requested{false};
std::atomic<int> stop_signal{0};

// The first SIGINT or SIGTERM asks the trainer to stop at the next step boundary and save that
// point. SA_RESETHAND restores the default action, so a second one kills the process at once: the
// save in progress is abandoned and the previous checkpoint stays intact (saves are atomic).
extern "C" void on_stop_signal(int signal) {
  stop_signal.store(signal);
  stop_requested.store(true);
}

// A signal the process inherited as ignored stays ignored (as a shell without job control starts
// background commands with SIGINT ignored, so that Ctrl-C on the script leaves them running).
void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  action.sa_flags = SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  for (const int signal : {SIGINT, SIGTERM}) {
    struct sigaction previous {};
    if (sigaction(signal, nullptr, &previous) == 0 && previous.sa_handler == SIG_IGN) continue;
    sigaction(signal, &action, nullptr);
  }
}

// A word as the shell reads it back: quoted unless it is plain.
std::string shell_word(const std::string& word) {
  if (!word.empty() &&
      word.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                             "_-+=.,/:@%") == std::string::npos) {
    return word;
  }
  std::string quoted = "'";
  for (const char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// The command that continues an interrupted run: this one's words (experiment, --set, ...) without
// the options that start or force a run, with --out DIR --resume.
std::string resume_command(const std::vector<std::string>& args, const std::filesystem::path& out) {
  std::string command = "strata train";
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& word = args[i];
    if (word == "--resume" || word == "--force" || word == "--weights-partial" ||
        word == "--overwrite")
      continue;  // --overwrite would start the run over: the printed command continues it
    if (word == "--out" || word == "--weights") {
      ++i;  // and its value
      continue;
    }
    if (word.starts_with("--out=") || word.starts_with("--weights=")) continue;
    command += ' ';
    command += shell_word(word);
  }
  command += " --out ";
  command += shell_word(out.string());
  command += " --resume";
  return command;
}

// Under MPI, an experiment that does not set `threads` gets the cores Slurm allocated to each task
// (SLURM_CPUS_PER_TASK, set by `--cpus-per-task`), or else the node's cores divided among the
// ranks on it; a rank that the launcher bound to fewer cores than that is told how to unbind it.
void set_threads_per_rank(Config& experiment, const Communicator& communicator) {
  const auto given = experiment.find("threads");
  if (given && given->as<int>() != 0) return;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int threads = std::max(1, cores / communicator.local_size());
  if (const char* per_task = environment("SLURM_CPUS_PER_TASK")) {
    char* end = nullptr;
    const long allocated = std::strtol(per_task, &end, 10);
    if (end == per_task || *end != '\0' || allocated < 1) {
      fail("SLURM_CPUS_PER_TASK is '{}', expected a whole number of CPUs of at least 1", per_task);
    }
    threads = static_cast<int>(allocated);
  }
  experiment.set("threads", std::to_string(threads));
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
  const int usable = CPU_COUNT(&allowed);
  if (usable < threads && communicator.rank() == 0) {
    std::printf(
        "warning: this rank may run on %d core(s) only (the launcher bound it), so its %d "
        "threads share them; run mpirun with --bind-to none (srun: --cpu-bind=none) to give each "
        "of the %d ranks on this node %d core(s)\n",
        usable, threads, communicator.local_size(), threads);
  }
}

}  // namespace

int run_train(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("out", po::value<std::string>(),
                        "output folder for model.h5 and summary.json "
                        "(default: runs/<experiment file name>)")("resume", po::bool_switch(),
                                                                  "continue from DIR/model.h5")(
      "force", po::bool_switch(),
      "with --resume: continue even when the experiment differs from the checkpoint's")(
      "overwrite", po::bool_switch(),
      "start a new run in a folder that holds one: its model.h5, best.h5 and summary.json are "
      "deleted once the data is loaded (without it, such a folder is refused)")(
      "allow-nonfinite", po::bool_switch(),
      "with --resume or --weights: load a checkpoint that holds NaN or infinite values")(
      "weights", po::value<std::string>(),
      "fine-tune: start from CKPT's /model tensors, matched by layer name (every tensor must "
      "match)")("weights-partial", po::bool_switch(),
                "with --weights: load the tensors that match by name and shape, list the rest")(
      "progress", po::value<std::string>()->default_value("auto"),
      "auto (a bar on a terminal, plain lines otherwise), bar, lines or none")(
      "threads", po::value<int>(),
      "worker threads of the backend (0: all cores); the same as --set threads=N");
  add_set_option(options);
  const Usage usage{"train", "EXP.yaml [options]",
                    "Train the experiment. Writes DIR/model.h5 (an HDF5 checkpoint, replaced\n"
                    "atomically) and DIR/summary.json. Ctrl-C (or SIGTERM) stops at the next\n"
                    "step, saves DIR/model.h5 there and prints the --resume command that\n"
                    "continues exactly (exit status 130, or 143 for SIGTERM)."};
  auto vm = parse(usage, options, {"EXP.yaml"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];

  Config experiment = load_experiment(path, *vm);
  if (vm->count("threads")) {
    const int threads = (*vm)["threads"].as<int>();
    if (threads < 0) fail("--threads {}: expected 0 (all cores) or a positive count", threads);
    experiment.set("threads", std::to_string(threads));
  }
  load_experiment_plugins(experiment, session.loader);
  Communicator* communicator = job_communicator(session);
  if (communicator != nullptr) set_threads_per_rank(experiment, *communicator);
  TrainOptions train_options;
  train_options.communicator = communicator;
  train_options.out_dir = output_folder(*vm, path, "");
  train_options.resume = (*vm)["resume"].as<bool>();
  train_options.force = (*vm)["force"].as<bool>();
  train_options.overwrite = (*vm)["overwrite"].as<bool>();
  if (train_options.overwrite && train_options.resume) {
    fail("--overwrite starts the run in DIR over and --resume continues it: give one of them");
  }
  train_options.allow_nonfinite = (*vm)["allow-nonfinite"].as<bool>();
  if (vm->count("weights")) train_options.weights = (*vm)["weights"].as<std::string>();
  train_options.weights_partial = (*vm)["weights-partial"].as<bool>();
  if (train_options.force && !train_options.resume) fail("--force only applies with --resume");
  if (train_options.allow_nonfinite && !train_options.resume && train_options.weights.empty()) {
    fail("--allow-nonfinite only applies with --resume or --weights");
  }
  if (train_options.weights_partial && train_options.weights.empty()) {
    fail("--weights-partial needs --weights CKPT (the checkpoint to take the matching tensors from)");
  }
  if (train_options.resume && !train_options.weights.empty()) {
    fail("--weights starts a new run from another checkpoint's weights and --resume continues this "
         "run from DIR/model.h5: give one of them");
  }
  train_options.progress = (*vm)["progress"].as<std::string>();
  const auto& mode = train_options.progress;
  if (mode != "auto" && mode != "bar" && mode != "lines" && mode != "none") {
    fail("--progress {}: expected auto, bar, lines or none", mode);
  }
  train_options.stop = &stop_requested;
  install_stop_handlers();
  TrainSummary summary;
  try {
    summary = train_experiment(experiment, session.registries, train_options);
  } catch (const JobError& error) {
    if (communicator == nullptr) throw;
    // Every rank holds the same message: rank 0 prints it, then the ranks leave together (a rank
    // that exits non-zero first makes mpirun kill the others, maybe before rank 0 has printed).
    if (communicator->rank() == 0) {
      std::fflush(stdout);
      std::fprintf(stderr, "error: %s\n", error.what());
      std::fflush(stderr);
    }
    communicator->barrier("the end of the run");
    return 1;
  } catch (const std::exception& error) {
    // One rank alone failed: the others would wait for it forever, so the job ends here.
    if (communicator == nullptr || communicator->size() == 1) throw;
    communicator->abort(error.what(), 1);
  }
  // A rank that agreed to stop without being signalled itself exits as if interrupted (130).
  const int stop_status = 128 + (stop_signal.load() != 0 ? stop_signal.load() : SIGINT);
  if (communicator == nullptr || communicator->rank() == 0) {
    if (summary.interrupted) {
      std::printf("continue with: %s\n", resume_command(args, train_options.out_dir).c_str());
    } else {
      std::printf(
          "test accuracy %.4f (loss %.4f) after %lld epochs, %.1fs of training at %.0f images/s\n",
          summary.test_accuracy, summary.test_loss, static_cast<long long>(summary.epochs),
          summary.train_seconds, summary.train_images_per_second);
      const LoopTime& time = summary.time;
      std::printf(
          "time: steps %.1fs; besides them, waiting for data %.1fs, step hooks %.1fs, validation "
          "%.1fs, test %.1fs, epoch ends (checkpoints) %.1fs: %.1f%% of the steps' time\n",
          time.steps, time.data, time.step_hooks, time.validation, time.test, time.epoch_ends,
          100.0 * time.overhead_fraction());
      std::printf("checkpoint: %s\nsummary: %s\n", summary.checkpoint.c_str(),
                  summary.summary.c_str());
    }
    std::fflush(stdout);
  }
  // Under MPI the ranks leave together, once rank 0 has written and printed everything: a rank
  // exiting 130 first would make mpirun kill rank 0, maybe in the middle of its last save.
  if (communicator != nullptr) communicator->barrier("the end of the run");
  return summary.interrupted ? stop_status : 0;
}

}  // namespace strata::cli
