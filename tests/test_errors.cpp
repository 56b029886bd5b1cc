// Error policy: argument errors name the argument and leave every output untouched; value errors report the first offending
// row, write valid rows, poison offending rows with NaN.
#include <catch2/catch.hpp>

#include <cstring>

#include "test_util.hpp"

using kd::divergence;

namespace {

struct fixture {
  static constexpr std::int64_t rows = 3, cols = 5;
  std::vector<float> s = std::vector<float>(rows * cols), t = std::vector<float>(rows * cols);
  std::vector<float> gs = std::vector<float>(rows * cols, 777.f), gt = std::vector<float>(rows * cols, 777.f);
  std::vector<float> per_row = std::vector<float>(rows, 777.f);
  fixture() {
    for (std::size_t i = 0; i < s.size(); ++i) {
      s[i] = static_cast<float>(std::sin(double(i)));
      t[i] = static_cast<float>(std::cos(double(i)));
    }
  }
  bool untouched() const {
    auto p = [](float v) { return v == 777.f; };
    return std::all_of(gs.begin(), gs.end(), p) && std::all_of(gt.begin(), gt.end(), p) &&
           std::all_of(per_row.begin(), per_row.end(), p);
  }
  kd::distill_outputs<float> outputs() {
    kd::distill_outputs<float> o;
    o.grad_student = kd::mut_rows<float>(gs.data(), rows, cols);
    o.grad_teacher = kd::mut_rows<float>(gt.data(), rows, cols);
    o.per_row = per_row.data();
    return o;
  }
};

void expect_invalid(const kd::status& st, const char* argument) {
  INFO(st.to_string());
  CHECK(st.code == kd::errc::invalid_argument);
  CHECK(std::string(st.argument) == argument);
  CHECK(st.to_string().find(std::string("'") + argument + "'") != std::string::npos);
}

}  // namespace

TEST_CASE("argument errors name the argument and touch no output", "[errors]") {
  kdt::for_each_backend([&](auto be, const char* name) {
    INFO(name);
    auto check = [&](auto mutate, const char* argument) {
      fixture f;
      kd::student_input<float> s{kd::const_rows<float>(f.s.data(), f.rows, f.cols), kd::input_kind::logits};
      kd::teacher_input<float> t{kd::const_rows<float>(f.t.data(), f.rows, f.cols), kd::input_kind::logits};
      kd::distill_options o;
      kd::divergence d = divergence::jsd(0.5);
      auto out = f.outputs();
      mutate(s, t, o, d, out, f);
      kd::loss_result r;
      r.loss = 777.0;
      expect_invalid(kd::divergence_loss(d, s, t, o, r, out, be), argument);
      CHECK(f.untouched());
      CHECK(r.loss == 777.0);
    };
    using S = kd::student_input<float>;
    using T = kd::teacher_input<float>;
    using O = kd::distill_options;
    using D = kd::divergence;
    using Out = kd::distill_outputs<float>;
    check([](S& s, T&, O&, D&, Out&, fixture&) { s.x.data = nullptr; }, "student");
    check([](S&, T& t, O&, D&, Out&, fixture&) { t.x.data = nullptr; }, "teacher");
    check([](S&, T& t, O&, D&, Out&, fixture&) { t.x.rows = 2; }, "teacher");
    check([](S&, T& t, O&, D&, Out&, fixture&) { t.x.cols = 4; }, "teacher");
    check([](S& s, T&, O&, D&, Out&, fixture&) { s.x.row_stride = 4; }, "student");
    check([](S& s, T&, O&, D&, Out&, fixture&) { s.x.cols = 0; }, "student");
    check([](S& s, T&, O&, D&, Out&, fixture&) { s.x.rows = -1; }, "student");
    check([](S&, T&, O& o, D&, Out&, fixture&) { o.temperature = 0.0; }, "temperature");
    check([](S&, T&, O& o, D&, Out&, fixture&) { o.temperature = -1.0; }, "temperature");
    check([](S&, T&, O& o, D&, Out&, fixture&) { o.temperature = NAN; }, "temperature");
    check([](S&, T&, O& o, D&, Out&, fixture&) { o.temperature = INFINITY; }, "temperature");
    check([](S&, T&, O&, D& d, Out&, fixture&) { d = divergence::jsd(-0.1); }, "beta");
    check([](S&, T&, O&, D& d, Out&, fixture&) { d = divergence::jsd(1.1); }, "beta");
    check([](S&, T&, O&, D& d, Out&, fixture&) { d = divergence::jsd(NAN); }, "beta");
    check([](S&, T&, O&, D& d, Out&, fixture&) { d = divergence::skew_kl(1.0); }, "alpha");
    check([](S&, T&, O&, D& d, Out&, fixture&) { d = divergence::skew_reverse_kl(-0.5); }, "alpha");
    check([](S&, T&, O& o, D&, Out&, fixture&) { o.reduction = kd::reduction::normalizer; }, "normalizer");
    check([](S&, T&, O& o, D&, Out&, fixture&) {
      o.reduction = kd::reduction::normalizer;
      o.normalizer = -3;
    }, "normalizer");
    static const std::int64_t labels[2] = {1, 2};
    check([](S&, T&, O& o, D&, Out&, fixture&) { o.labels = kd::label_view(labels, 2); }, "labels");
    static const float weights[3] = {1.f, -1.f, 1.f};
    check([](S&, T&, O& o, D&, Out&, fixture&) { o.row_weights = weights; }, "row_weights");
    static const float nan_weights[3] = {1.f, NAN, 1.f};
    check([](S&, T&, O& o, D&, Out&, fixture&) { o.row_weights = nan_weights; }, "row_weights");
    check([](S&, T&, O&, D&, Out& out, fixture&) { out.grad_student.cols = 4; }, "grad_student");
    check([](S&, T&, O&, D&, Out& out, fixture&) { out.grad_teacher.rows = 2; }, "grad_teacher");
    // partial overlap with the student input (shifted by one element)
    check([](S& s, T& t, O&, D&, Out& out, fixture& f) {
      s.x.rows = t.x.rows = 2;
      out.grad_student = kd::mut_rows<float>(f.s.data() + 1, 2, 5);
      out.grad_teacher = {};
    }, "grad_student");
    // the student gradient written over the teacher's input
    check([](S&, T&, O&, D&, Out& out, fixture& f) { out.grad_student = kd::mut_rows<float>(f.t.data(), 3, 5); },
          "grad_student");
    // both gradients into the same buffer
    check([](S&, T&, O&, D&, Out& out, fixture& f) { out.grad_teacher = kd::mut_rows<float>(f.gs.data(), 3, 5); },
          "grad_teacher");
  });
}

TEST_CASE("non-finite inputs are reported with the first offending row; other rows are still written", "[errors]") {
  kdt::for_each_backend([&](auto be, const char* name) {
    for (float bad : {NAN, INFINITY}) {
      fixture f;
      f.s[1 * f.cols + 2] = bad;
      f.t[2 * f.cols + 0] = bad;
      auto c = kdt::run_call(divergence::reverse_kl(), f.s, f.t, f.rows, f.cols, {}, be, true);
      INFO(name << " bad=" << bad << " " << c.st.to_string());
      CHECK(c.st.code == kd::errc::non_finite_input);
      CHECK(c.st.row == 1);
      CHECK(std::string(c.st.argument) == "student");
      CHECK(std::isnan(c.r.loss));
      CHECK(std::isnan(c.per_row[1]));
      for (std::int64_t j = 0; j < f.cols; ++j) {
        CHECK(std::isfinite(c.gs[j]));  // row 0 is valid and written
        CHECK(c.gs[j] != 777.f);
        CHECK(std::isnan(c.gs[f.cols + j]));
        CHECK(std::isnan(c.gs[2 * f.cols + j]));
      }
    }
  });
}

TEST_CASE("an infinite divergence is reported as a support mismatch", "[errors]") {
  // teacher gives probability 0 where the student has mass: reverse KL = +inf; forward KL is finite here.
  std::vector<float> s = {1.f, 2.f, 0.f, 0.f, 1.f, 2.f}, t = {1.f, -INFINITY, 0.f, 0.f, 1.f, 2.f};
  kdt::for_each_backend([&](auto be, const char* name) {
    INFO(name);
    auto r = kdt::run_call(divergence::reverse_kl(), s, t, 2, 3, {}, be);
    CHECK(r.st.code == kd::errc::support_mismatch);
    CHECK(r.st.row == 0);
    CHECK(r.r.loss == INFINITY);
    CHECK(std::isnan(r.gs[0]));
    CHECK(std::isfinite(r.gs[3]));
    auto f = kdt::run_call(divergence::forward_kl(), s, t, 2, 3, {}, be);
    CHECK(f.st.ok());
    CHECK(std::isfinite(f.r.loss));
    // skew and JSD stay finite for the same inputs
    CHECK(kdt::run_call(divergence::skew_reverse_kl(0.1), s, t, 2, 3, {}, be).st.ok());
    CHECK(kdt::run_call(divergence::jsd(0.5), s, t, 2, 3, {}, be).st.ok());
  });
}

TEST_CASE("kd::throw_if_error turns a status into kd::error for callers who want exceptions", "[errors]") {
  kd::status st = kd::make_error(kd::errc::invalid_argument, "temperature", "must be finite and > 0", -1.0);
  CHECK(st.to_string() == "kd: invalid argument 'temperature': must be finite and > 0 (got -1)");
  CHECK_THROWS_AS(kd::throw_if_error(st), kd::error);
  CHECK_NOTHROW(kd::throw_if_error(kd::ok_status()));
}
