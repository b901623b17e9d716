// tests/support/thread_communicator.hpp: the in-process job that stands in for mpirun in tests.
// Its collectives, messages, aborts and watchdog are checked here, so that a test built on it
// (the distributed search, the trainer's gradient averaging) fails for its own reasons only.
#define BOOST_TEST_MODULE thread_communicator
#include <atomic>
#include <boost/test/unit_test.hpp>
#include <cstring>
#include <map>
#include <random>
#include <tuple>

#include "test_support.hpp"
#include "thread_communicator.hpp"

using namespace strata;
using namespace std::chrono_literals;

namespace {

// Random values per rank, drawn from the rank's own seed.
template <class T>
std::vector<T> values_of(int rank, std::size_t count) {
  std::mt19937 rng(1000 + rank);
  std::uniform_real_distribution<double> unit(-100, 100);
  std::vector<T> values(count);
  for (T& v : values) v = static_cast<T>(unit(rng));
  return values;
}

void require_all_returned(const std::vector<test::ThreadJob::Outcome>& outcomes) {
  for (std::size_t r = 0; r < outcomes.size(); ++r) {
    BOOST_TEST(outcomes[r].returned, "rank " << r);
    if (outcomes[r].aborted)
      BOOST_TEST_MESSAGE("rank " << r << ": " << outcomes[r].aborted->message);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(allreduce_gives_every_rank_the_same_rank_order_reduction) {
  constexpr int kRanks = 4;
  constexpr std::size_t kCount = 1001;
  // What the ranks should get: sums in rank order (float addition is not associative).
  std::vector<float> sum = values_of<float>(0, kCount), low = sum, high = sum;
  std::vector<int64_t> int_sum = values_of<int64_t>(0, kCount);
  for (int r = 1; r < kRanks; ++r) {
    const auto v = values_of<float>(r, kCount);
    const auto w = values_of<int64_t>(r, kCount);
    for (std::size_t i = 0; i < kCount; ++i) {
      sum[i] += v[i];
      low[i] = std::min(low[i], v[i]);
      high[i] = std::max(high[i], v[i]);
      int_sum[i] += w[i];
    }
  }
  test::ThreadJob job(kRanks);
  std::vector<std::vector<float>> sums(kRanks), lows(kRanks), highs(kRanks);
  std::vector<std::vector<double>> doubles(kRanks);
  std::vector<std::vector<int64_t>> ints(kRanks);
  require_all_returned(job.run([&](test::ThreadCommunicator& c) {
    const int r = c.rank();
    sums[r] = lows[r] = highs[r] = values_of<float>(r, kCount);
    c.allreduce(std::span<float>(sums[r]), ReduceOp::sum, "sum");
    c.allreduce(std::span<float>(lows[r]), ReduceOp::min, "min");
    c.allreduce(std::span<float>(highs[r]), ReduceOp::max, "max");
    doubles[r] = values_of<double>(r, kCount);
    c.allreduce(std::span<double>(doubles[r]), ReduceOp::sum, "double sum");
    ints[r] = values_of<int64_t>(r, kCount);
    c.allreduce(std::span<int64_t>(ints[r]), ReduceOp::sum, "int sum");
  }));
  for (int r = 0; r < kRanks; ++r) {
    BOOST_TEST(std::memcmp(sums[r].data(), sum.data(), kCount * sizeof(float)) == 0, "rank " << r);
    BOOST_TEST(lows[r] == low, boost::test_tools::per_element());
    BOOST_TEST(highs[r] == high, boost::test_tools::per_element());
    BOOST_TEST(doubles[r] == doubles[0], boost::test_tools::per_element());
    BOOST_TEST(ints[r] == int_sum, boost::test_tools::per_element());
  }
}

BOOST_AUTO_TEST_CASE(one_rank_leaves_data_unchanged_bit_for_bit) {
  test::ThreadJob job(1);
  const auto original = values_of<float>(3, 257);
  std::vector<float> data = original;
  require_all_returned(job.run([&](test::ThreadCommunicator& c) {
    c.allreduce(std::span<float>(data), ReduceOp::sum, "sum");
    const auto ticket = c.start_allreduce(std::span<float>(data), "bucket");
    c.wait(ticket);
    c.barrier("end");
  }));
  BOOST_TEST(std::memcmp(data.data(), original.data(), data.size() * sizeof(float)) == 0);
}

BOOST_AUTO_TEST_CASE(started_allreduces_complete_in_order_at_wait) {
  constexpr int kRanks = 3;
  test::ThreadJob job(kRanks);
  std::vector<std::vector<float>> a(kRanks), b(kRanks);
  std::vector<int64_t> collectives(kRanks);
  require_all_returned(job.run([&](test::ThreadCommunicator& c) {
    const int r = c.rank();
    a[r] = values_of<float>(r, 64);
    b[r] = values_of<float>(r + 10, 32);
    c.start_allreduce(std::span<float>(a[r]), "bucket 0");
    const auto second = c.start_allreduce(std::span<float>(b[r]), "bucket 1");
    c.wait(second);  // completes bucket 0 too
    collectives[r] = c.collectives();
  }));
  BOOST_TEST(collectives == std::vector<int64_t>(kRanks, 2), boost::test_tools::per_element());
  for (int r = 1; r < kRanks; ++r) {
    BOOST_TEST(a[r] == a[0], boost::test_tools::per_element());
    BOOST_TEST(b[r] == b[0], boost::test_tools::per_element());
  }
  BOOST_TEST(a[0] != values_of<float>(0, 64));
}

BOOST_AUTO_TEST_CASE(broadcast_copies_the_roots_bytes_and_strings_of_any_length) {
  constexpr int kRanks = 3;
  test::ThreadJob job(kRanks);
  std::vector<std::vector<double>> data(kRanks);
  std::vector<std::string> text(kRanks);
  require_all_returned(job.run([&](test::ThreadCommunicator& c) {
    const int r = c.rank();
    data[r] = values_of<double>(r, 100);
    c.broadcast_values(std::span<double>(data[r]), 2, "weights");
    text[r] = r == 1 ? std::string(5000, 'x') + "end" : "short";
    c.broadcast(text[r], 1, "text");
  }));
  for (int r = 0; r < kRanks; ++r) {
    BOOST_TEST(data[r] == values_of<double>(2, 100), boost::test_tools::per_element());
    BOOST_TEST(text[r] == std::string(5000, 'x') + "end");
  }
}

BOOST_AUTO_TEST_CASE(messages_arrive_in_order_per_sender_and_tag_and_receive_times_out) {
  test::ThreadJob job(3);
  std::vector<Message> got;
  std::optional<Message> late;
  std::chrono::steady_clock::duration waited{};
  std::atomic<int> answered{0};
  require_all_returned(job.run([&](test::ThreadCommunicator& c) {
    if (c.rank() == 0) {
      // Tag filter first: the tag-7 message is taken before older tag-5 ones.
      got.push_back(*c.receive(2, 7, 10s));
      for (int i = 0; i < 6; ++i) got.push_back(*c.receive(Communicator::kAnySource, 5, 10s));
      const auto start = std::chrono::steady_clock::now();
      late = c.receive(Communicator::kAnySource, Communicator::kAnyTag, 50ms);
      waited = std::chrono::steady_clock::now() - start;
      c.send(1, 9, "done");
      c.send(2, 9, "done");
    } else {
      for (int i = 0; i < 3; ++i) c.send(0, 5, fmt::format("{}:{}", c.rank(), i));
      if (c.rank() == 2) c.send(0, 7, "tagged");
      if (c.receive(0, 9, 10s)) ++answered;
    }
  }));
  BOOST_REQUIRE_EQUAL(got.size(), 7u);
  BOOST_TEST(got[0].body == "tagged");
  BOOST_TEST(got[0].source == 2);
  std::map<int, std::vector<std::string>> per_sender;
  for (std::size_t i = 1; i < got.size(); ++i) {
    BOOST_TEST(got[i].tag == 5);
    per_sender[got[i].source].push_back(got[i].body);
  }
  BOOST_TEST(per_sender[1] == std::vector<std::string>({"1:0", "1:1", "1:2"}),
             boost::test_tools::per_element());
  BOOST_TEST(per_sender[2] == std::vector<std::string>({"2:0", "2:1", "2:2"}),
             boost::test_tools::per_element());
  BOOST_TEST(answered == 2);
  BOOST_TEST(!late.has_value());
  BOOST_TEST(waited >= 50ms);
}

BOOST_AUTO_TEST_CASE(ranks_are_grouped_into_nodes) {
  test::ThreadJob job(5, 2);
  std::vector<std::tuple<int, int, std::string>> where(5);
  require_all_returned(job.run([&](test::ThreadCommunicator& c) {
    where[c.rank()] = {c.local_rank(), c.local_size(), c.host()};
  }));
  BOOST_TEST((where[0] == std::tuple<int, int, std::string>{0, 2, "node0"}));
  BOOST_TEST((where[3] == std::tuple<int, int, std::string>{1, 2, "node1"}));
  BOOST_TEST((where[4] == std::tuple<int, int, std::string>{0, 1, "node2"}));
  BOOST_TEST(rank_label(job.communicator(3)) == "rank 3 of 5 (node1)");
}

BOOST_AUTO_TEST_CASE(abort_ends_ranks_waiting_in_receive_and_in_collectives) {
  test::ThreadJob job(4);
  const auto outcomes = job.run([&](test::ThreadCommunicator& c) {
    if (c.rank() == 3) {
      std::this_thread::sleep_for(20ms);
      c.abort("rank 3 found a NaN", 5);
    }
    if (c.rank() == 2) {
      c.receive(0, 1, std::chrono::hours(1));  // never sent
    } else {
      c.barrier("never complete: rank 3 aborts");
    }
  });
  for (int r = 0; r < 4; ++r) {
    BOOST_REQUIRE(outcomes[r].aborted.has_value());
    BOOST_TEST(outcomes[r].aborted->rank == 3);
    BOOST_TEST(outcomes[r].aborted->code == 5);
    BOOST_TEST(outcomes[r].aborted->message == "rank 3 found a NaN");
  }
}

BOOST_AUTO_TEST_CASE(an_exception_on_one_rank_ends_the_job_instead_of_hanging_it) {
  test::ThreadJob job(3);
  const auto outcomes = job.run([&](test::ThreadCommunicator& c) {
    if (c.rank() == 1) throw Error("data error in shard 1");
    c.barrier("waits for rank 1");
  });
  BOOST_TEST(static_cast<bool>(outcomes[1].error));
  BOOST_REQUIRE(outcomes[0].aborted.has_value());
  STRATA_CHECK_CONTAINS(outcomes[0].aborted->message, "data error in shard 1");
  BOOST_TEST(outcomes[2].aborted.has_value());
}

BOOST_AUTO_TEST_CASE(mismatched_collectives_abort_naming_both_calls) {
  test::ThreadJob job(2);
  const auto outcomes = job.run([&](test::ThreadCommunicator& c) {
    std::vector<float> data = values_of<float>(c.rank(), c.rank() == 0 ? 10 : 12);
    c.allreduce(std::span<float>(data), ReduceOp::sum,
                fmt::format("gradient bucket 0 on rank {}", c.rank()));
  });
  BOOST_REQUIRE(outcomes[0].aborted.has_value());
  const std::string message = outcomes[0].aborted->message;
  BOOST_TEST_MESSAGE(message);
  STRATA_CHECK_CONTAINS(message, "allreduce of 10 float (sum)");
  STRATA_CHECK_CONTAINS(message, "allreduce of 12 float (sum)");
  STRATA_CHECK_CONTAINS(message, "gradient bucket 0 on rank 0");
  STRATA_CHECK_CONTAINS(message, "gradient bucket 0 on rank 1");
  BOOST_TEST(outcomes[1].aborted.has_value());
}

BOOST_AUTO_TEST_CASE(the_watchdog_aborts_a_collective_that_waits_too_long) {
  test::ThreadJob job(2);
  const auto outcomes = job.run([&](test::ThreadCommunicator& c) {
    c.set_watchdog(0.1);
    if (c.rank() == 0) {
      c.barrier("epoch 3 agreement");
    } else {
      c.receive(0, 1, std::chrono::hours(1));  // never joins the barrier; the abort ends this
    }
  });
  BOOST_REQUIRE(outcomes[0].aborted.has_value());
  BOOST_TEST(outcomes[0].aborted->rank == 0);
  STRATA_CHECK_CONTAINS(outcomes[0].aborted->message, "epoch 3 agreement");
  STRATA_CHECK_CONTAINS(outcomes[0].aborted->message, "rank 0 of 2 (node0)");
  BOOST_TEST(outcomes[1].aborted.has_value());
}
