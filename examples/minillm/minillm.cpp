// minillm: a libtorch (C++) trainer that embeds kd and distills a teacher language model into a student on real text.
//
//   1. corpus -> records ('%'-separated fortune files, or blank-line-separated paragraphs), held-out split by record
//   2. sentencepiece tokenizer trained on the training records (cached)
//   3. teacher: a small GPT trained on the corpus (cached checkpoint)
//   4. one common student initialisation (a smaller GPT, briefly pre-trained on the corpus), then, with the same number of
//      optimizer steps and prompts each:
//        seqkd   forward KL on teacher-generated responses (word-level KD on SeqKD data)       kd::forward_kl
//        rkl     token-level reverse KL on the same teacher-generated responses                kd::reverse_kl
//        minillm MiniLLM policy gradient (Gu et al., arXiv 2306.08543): single-step decomposition, teacher-mixed sampling
//                (alpha 0.2), length-normalized long-term rewards, plus the language-modeling term
//        gkd     generalized JSD(0.5) on on-policy student samples (Agarwal et al., arXiv 2306.13649)  kd::jsd
//   5. evaluation on held-out prompts, summary table, CSV log, SVG plot, sample continuations (docs/minillm.md).
// Progress bars and ETAs go to stderr; the summary goes to stdout. Errors: one line on stderr, exit code 1 (2 for bad flags).
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kd_torch.hpp"
#include "minillm_pg.hpp"

namespace fs = std::filesystem;
using torch::Tensor;

namespace {

// ---------------------------------------------------------------------------------------------------------------- errors
struct fatal : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------------------------------------------- config
struct config {
  std::string corpus = "/usr/share/games/fortunes";
  std::string out = "out/minillm";
  std::string cache = ".cache/minillm";
  std::string teacher_ckpt;  // explicit checkpoint to load (else cache)
  std::string methods = "seqkd,rkl,minillm,gkd";
  int vocab = 2000;
  int ctx = 64;
  int teacher_dim = 192, teacher_layers = 4, teacher_heads = 6;
  int student_dim = 96, student_layers = 2, student_heads = 4;
  int teacher_steps = 600, teacher_batch = 16;
  int student_pre_steps = 150;
  int steps = 120, batch = 16;
  int prompt_len = 8, gen_len = 24;
  int eval_prompts = 128, eval_every = 20, monitor_prompts = 32;
  double teacher_lr = 2e-3, student_lr = 5e-4;
  double alpha = 0.2, lm_weight = 1.0, gkd_beta = 0.5;
  std::string pg_variant = "paper";  // kd::pg_options preset: paper | reference (LMOps code: r_t included, gamma 0.95,
                                     // divide by n_t, whitened advantages)
  double pg_clip = 0.0;              // PPO clip range (0: off; one on-policy update per rollout)
  double pg_reward_scale = 1.0;      // rewards are divided by this; a huge value switches the long-term term off (ablation)
  double heldout_fraction = 0.05;
  int max_records = 0;  // 0: all
  std::uint64_t seed = 1;
  int threads = 2;
  bool smoke = false;
  int samples_shown = 3;
};

void apply_smoke(config& c) {
  c.smoke = true;
  c.vocab = 400;
  c.ctx = 32;
  c.teacher_dim = 48, c.teacher_layers = 1, c.teacher_heads = 2;
  c.student_dim = 32, c.student_layers = 1, c.student_heads = 2;
  c.teacher_steps = 60, c.teacher_batch = 8;
  c.student_pre_steps = 10;
  c.steps = 12, c.batch = 8;
  c.prompt_len = 4, c.gen_len = 10;
  c.eval_prompts = 16, c.eval_every = 4, c.monitor_prompts = 8;
  c.teacher_lr = 5e-3, c.student_lr = 3e-3;
  c.max_records = 3000;
  c.samples_shown = 1;
}

const char* kUsage =
    "usage: minillm [flags]\n"
    "  --corpus PATH        UTF-8 text file or folder (default /usr/share/games/fortunes)\n"
    "  --out DIR            outputs: summary.md, train_log.csv, eval.csv, samples.txt, curves.svg (default out/minillm)\n"
    "  --cache DIR          tokenizer and teacher checkpoint cache (default .cache/minillm)\n"
    "  --teacher FILE       load this teacher checkpoint instead of the cache\n"
    "  --methods LIST       comma-separated subset of seqkd,rkl,minillm,gkd (default all)\n"
    "  --vocab N --ctx N    tokenizer vocabulary size (2000), context length (64)\n"
    "  --teacher-dim N --teacher-layers N --teacher-heads N    (192, 4, 6)\n"
    "  --student-dim N --student-layers N --student-heads N    (96, 2, 4)\n"
    "  --teacher-steps N    teacher training steps (600); --student-pre-steps N common student pre-training (150)\n"
    "  --steps N            distillation optimizer steps per method (120); --batch N prompts per step (16)\n"
    "  --prompt-len N --gen-len N   prompt tokens (8) and response tokens (24)\n"
    "  --eval-prompts N     held-out prompts for the final evaluation (128)\n"
    "  --alpha X            MiniLLM teacher-mix ratio (0.2); --lm-weight X MiniLLM LM term (1); --gkd-beta X (0.5)\n"
    "  --pg-variant NAME    MiniLLM estimator preset: paper (Eq. 4-7, default) or reference (LMOps code defaults)\n"
    "  --pg-clip X          MiniLLM PPO clip range (0 = off, default: one on-policy update per rollout)\n"
    "  --pg-reward-scale X  MiniLLM rewards divided by X (1); e.g. 1e9 leaves only the single-step term (ablation)\n"
    "  --teacher-lr X --student-lr X   (2e-3, 5e-4)\n"
    "  --max-records N      use at most N corpus records (0: all)\n"
    "  --seed N             (1); a fixed seed makes the run reproducible\n"
    "  --threads N          torch intra-op threads (2)\n"
    "  --smoke              tiny models and a few steps; checks that losses go down and outputs are written\n";

config parse_args(int argc, char** argv) {
  config c;
  // --smoke first, so explicit flags override its sizes.
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--smoke") apply_smoke(c);
  auto need = [&](int& i) -> std::string {
    if (i + 1 >= argc) throw usage_error(std::string("flag ") + argv[i] + " needs a value");
    return argv[++i];
  };
  auto to_int = [](const std::string& f, const std::string& v, long lo) {
    char* end = nullptr;
    long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end || x < lo || x > 100000000) throw usage_error("flag " + f + ": bad value '" + v + "'");
    return static_cast<int>(x);
  };
  auto to_double = [](const std::string& f, const std::string& v, double lo, double hi) {
    char* end = nullptr;
    double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end || !(x >= lo && x <= hi)) throw usage_error("flag " + f + ": bad value '" + v + "'");
    return x;
  };
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    if (f == "--smoke") continue;
    if (f == "--help" || f == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (f == "--corpus") c.corpus = need(i);
    else if (f == "--out") c.out = need(i);
    else if (f == "--cache") c.cache = need(i);
    else if (f == "--teacher") c.teacher_ckpt = need(i);
    else if (f == "--methods") c.methods = need(i);
    else if (f == "--vocab") c.vocab = to_int(f, need(i), 16);
    else if (f == "--ctx") c.ctx = to_int(f, need(i), 8);
    else if (f == "--teacher-dim") c.teacher_dim = to_int(f, need(i), 8);
    else if (f == "--teacher-layers") c.teacher_layers = to_int(f, need(i), 1);
    else if (f == "--teacher-heads") c.teacher_heads = to_int(f, need(i), 1);
    else if (f == "--student-dim") c.student_dim = to_int(f, need(i), 8);
    else if (f == "--student-layers") c.student_layers = to_int(f, need(i), 1);
    else if (f == "--student-heads") c.student_heads = to_int(f, need(i), 1);
    else if (f == "--teacher-steps") c.teacher_steps = to_int(f, need(i), 0);
    else if (f == "--student-pre-steps") c.student_pre_steps = to_int(f, need(i), 0);
    else if (f == "--steps") c.steps = to_int(f, need(i), 1);
    else if (f == "--batch") c.batch = to_int(f, need(i), 1);
    else if (f == "--prompt-len") c.prompt_len = to_int(f, need(i), 1);
    else if (f == "--gen-len") c.gen_len = to_int(f, need(i), 2);
    else if (f == "--eval-prompts") c.eval_prompts = to_int(f, need(i), 1);
    else if (f == "--alpha") c.alpha = to_double(f, need(i), 0.0, 1.0);
    else if (f == "--lm-weight") c.lm_weight = to_double(f, need(i), 0.0, 1e6);
    else if (f == "--gkd-beta") c.gkd_beta = to_double(f, need(i), 0.0, 1.0);
    else if (f == "--pg-variant") {
      c.pg_variant = need(i);
      if (c.pg_variant != "paper" && c.pg_variant != "reference")
        throw usage_error("--pg-variant must be paper or reference, got '" + c.pg_variant + "'");
    } else if (f == "--pg-clip") c.pg_clip = to_double(f, need(i), 0.0, 0.99);
    else if (f == "--pg-reward-scale") c.pg_reward_scale = to_double(f, need(i), 1e-6, 1e30);
    else if (f == "--teacher-lr") c.teacher_lr = to_double(f, need(i), 0.0, 1.0);
    else if (f == "--student-lr") c.student_lr = to_double(f, need(i), 0.0, 1.0);
    else if (f == "--max-records") c.max_records = to_int(f, need(i), 0);
    else if (f == "--seed") c.seed = static_cast<std::uint64_t>(to_int(f, need(i), 0));
    else if (f == "--threads") c.threads = to_int(f, need(i), 1);
    else throw usage_error("unknown flag '" + f + "' (see --help)");
  }
  if (c.teacher_dim % c.teacher_heads || c.student_dim % c.student_heads)
    throw usage_error("model dim must be a multiple of the number of heads");
  if (1 + c.prompt_len + c.gen_len > c.ctx)
    throw usage_error("1 + --prompt-len + --gen-len must be <= --ctx");
  return c;
}

// ---------------------------------------------------------------------------------------------------------------- progress
using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// A progress bar with ETA on stderr. On a terminal it redraws one line; otherwise it prints every ~10%.
class progress {
 public:
  progress(std::string name, int total) : name_(std::move(name)), total_(std::max(total, 1)), t0_(clock_type::now()) {
    tty_ = isatty(fileno(stderr));
    draw(0, "");
  }
  void update(int done, const std::string& info = "") {
    const double now = seconds_since(t0_);
    const int decile = done * 10 / total_;
    if (done < total_ && ((tty_ && now - last_ < 0.2) || (!tty_ && decile == last_decile_))) return;
    last_ = now;
    last_decile_ = decile;
    last_done_ = done;
    draw(done, info);
  }
  double finish(const std::string& info = "") {
    if (tty_ || last_done_ != total_ || !info.empty()) draw(total_, info);
    if (tty_) std::fputc('\n', stderr);
    return seconds_since(t0_);
  }

 private:
  void draw(int done, const std::string& info) {
    const double el = seconds_since(t0_);
    const double eta = done > 0 ? el / done * (total_ - done) : 0.0;
    const int width = 24, fill = done * width / total_;
    std::string bar(fill, '#');
    bar.resize(width, '.');
    char buf[256];
    std::snprintf(buf, sizeof buf, "%-16s [%s] %5d/%-5d %3d%%  %6.1fs  ETA %6.1fs  ", name_.c_str(), bar.c_str(), done,
                  total_, done * 100 / total_, el, eta);
    if (tty_) std::fprintf(stderr, "\r%s%s\x1b[K", buf, info.c_str());
    else std::fprintf(stderr, "%s%s\n", buf, info.c_str());
    std::fflush(stderr);
  }
  std::string name_;
  int total_;
  clock_type::time_point t0_;
  bool tty_ = false;
  double last_ = -1.0;
  int last_decile_ = -1;
  int last_done_ = -1;
};

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

// ---------------------------------------------------------------------------------------------------------------- corpus
std::uint64_t fnv1a(const std::string& s, std::uint64_t h = 1469598103934665603ull) {
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

bool valid_utf8(const std::string& s) {
  std::size_t i = 0, n = s.size();
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!len || i + len > n) return false;
    for (int k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += len;
  }
  return true;
}

// Whitespace (including newlines and tabs) collapsed to single spaces, trimmed.
std::string squash(const std::string& s) {
  std::string o;
  bool space = false;
  for (char ch : s) {
    if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v') {
      space = !o.empty();
    } else {
      if (space) o.push_back(' ');
      space = false;
      o.push_back(ch);
    }
  }
  return o;
}

// Records of one file: '%'-separated (fortune format) when the file has a line that is exactly "%", else paragraphs.
void split_records(const std::string& text, std::vector<std::string>& out) {
  std::istringstream in(text);
  std::string line, cur;
  bool percent = text.rfind("\n%\n") != std::string::npos || text.rfind("%\n", 0) == 0;
  auto flush = [&] {
    std::string r = squash(cur);
    if (!r.empty()) out.push_back(r);
    cur.clear();
  };
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const bool sep = percent ? line == "%" : squash(line).empty();
    if (sep) flush();
    else cur += line + "\n";
  }
  flush();
}

struct corpus_data {
  std::vector<std::string> train, heldout;
  std::size_t files = 0;
  std::uint64_t hash = 0;
};

corpus_data load_corpus(const config& cfg) {
  const fs::path root(cfg.corpus);
  std::error_code ec;
  if (!fs::exists(root, ec)) throw fatal("corpus '" + cfg.corpus + "' does not exist");
  std::vector<fs::path> files;
  if (fs::is_directory(root, ec)) {
    for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      const fs::path& p = it->path();
      if (it->is_directory() && p.filename() == "off") {  // fortunes' offensive subfolder
        it.disable_recursion_pending();
        continue;
      }
      const std::string ext = p.extension().string();
      if (!it->is_regular_file() || ext == ".dat" || ext == ".u8" || p.filename().string().front() == '.') continue;
      files.push_back(p);
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(root);
  }
  corpus_data cd;
  std::vector<std::string> records;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) throw fatal("cannot read corpus file '" + f.string() + "'");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.find('\0') != std::string::npos || !valid_utf8(text)) {
      if (files.size() == 1) throw fatal("corpus file '" + f.string() + "' is not UTF-8 text");
      continue;  // folder: skip binary or non-UTF-8 files
    }
    ++cd.files;
    split_records(text, records);
  }
  if (records.empty()) throw fatal("corpus '" + cfg.corpus + "' has no text records");
  if (records.size() < 2) throw fatal("corpus '" + cfg.corpus + "' has only one record (need >= 2 for a held-out split)");
  // Deterministic shuffle (own Fisher-Yates over mt19937_64, portable across standard libraries), then split by record.
  std::mt19937_64 rng(cfg.seed * 7919 + 17);
  for (std::size_t i = records.size() - 1; i > 0; --i) std::swap(records[i], records[rng() % (i + 1)]);
  if (cfg.max_records > 0 && records.size() > static_cast<std::size_t>(cfg.max_records)) records.resize(cfg.max_records);
  std::size_t n_held = std::max<std::size_t>(1, static_cast<std::size_t>(records.size() * cfg.heldout_fraction));
  cd.heldout.assign(records.begin(), records.begin() + n_held);
  cd.train.assign(records.begin() + n_held, records.end());
  std::uint64_t h = 1469598103934665603ull;
  for (const auto& r : cd.train) h = fnv1a(r + "\n", h);
  cd.hash = h;
  return cd;
}

// ---------------------------------------------------------------------------------------------------------------- tokenizer
// Token ids fixed at tokenizer training: 0 unk, 1 bos, 2 eos, 3 pad.
constexpr int kBos = 1, kEos = 2, kPad = 3;

std::string hex(std::uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

// sentencepiece through the minillm_spm shim (spm_shim.cpp), loaded local and deep-bound so its embedded protobuf never
// meets libtorch's. The shim is found next to this executable, or at $MINILLM_SPM.
class spm_tokenizer {
 public:
  static void* lib() {
    static void* h = [] {
      std::string path;
      if (const char* e = std::getenv("MINILLM_SPM")) path = e;
      else {
        std::error_code ec;
        path = (fs::read_symlink("/proc/self/exe", ec).parent_path() / "libminillm_spm.so").string();
      }
      void* l = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (!l) throw fatal(std::string("cannot load the sentencepiece shim: ") + dlerror());
      return l;
    }();
    return h;
  }
  template <class F>
  static F sym(const char* name) {
    void* p = dlsym(lib(), name);
    if (!p) throw fatal(std::string("sentencepiece shim lacks ") + name);
    return reinterpret_cast<F>(p);
  }
  static void train(const std::string& args, unsigned seed) {
    char err[512] = {0};
    if (sym<int (*)(const char*, unsigned, char*, int)>("minillm_spm_train")(args.c_str(), seed, err, sizeof err))
      throw fatal(std::string("sentencepiece training failed: ") + err);
  }
  explicit spm_tokenizer(const std::string& model) {
    char err[512] = {0};
    h_ = sym<void* (*)(const char*, char*, int)>("minillm_spm_load")(model.c_str(), err, sizeof err);
    if (!h_) throw fatal("cannot load tokenizer '" + model + "': " + err);
    enc_ = sym<int (*)(void*, const char*, int*, int)>("minillm_spm_encode");
    dec_ = sym<int (*)(void*, const int*, int, char*, int)>("minillm_spm_decode");
    size_ = sym<int (*)(void*)>("minillm_spm_piece_size")(h_);
  }
  ~spm_tokenizer() { sym<void (*)(void*)>("minillm_spm_free")(h_); }
  spm_tokenizer(const spm_tokenizer&) = delete;
  spm_tokenizer& operator=(const spm_tokenizer&) = delete;
  int GetPieceSize() const { return size_; }
  void Encode(const std::string& text, std::vector<int>* ids) const {
    ids->resize(text.size() + 16);
    int n = enc_(h_, text.c_str(), ids->data(), static_cast<int>(ids->size()));
    if (n < 0) throw fatal("tokenizer: encode failed");
    if (n > static_cast<int>(ids->size())) {
      ids->resize(n);
      n = enc_(h_, text.c_str(), ids->data(), n);
    }
    ids->resize(n);
  }
  void Decode(const std::vector<int>& ids, std::string* text) const {
    std::vector<char> buf(64 + ids.size() * 32);
    int n = dec_(h_, ids.data(), static_cast<int>(ids.size()), buf.data(), static_cast<int>(buf.size()));
    if (n < 0) throw fatal("tokenizer: decode failed");
    if (n >= static_cast<int>(buf.size())) {
      buf.resize(n + 1);
      dec_(h_, ids.data(), static_cast<int>(ids.size()), buf.data(), static_cast<int>(buf.size()));
    }
    text->assign(buf.data(), n);
  }

 private:
  void* h_ = nullptr;
  int (*enc_)(void*, const char*, int*, int) = nullptr;
  int (*dec_)(void*, const int*, int, char*, int) = nullptr;
  int size_ = 0;
};

std::unique_ptr<spm_tokenizer> load_tokenizer(const config& cfg, const corpus_data& cd,
                                                                      std::string& key) {
  key = hex(fnv1a("v1 vocab=" + std::to_string(cfg.vocab), cd.hash));
  const fs::path dir = fs::path(cfg.cache) / ("tok-" + key);
  const fs::path model = dir / "spm.model";
  std::error_code ec;
  if (!fs::exists(model)) {
    fs::create_directories(dir, ec);
    if (ec) throw fatal("cannot create cache folder '" + dir.string() + "': " + ec.message());
    const fs::path txt = dir / "train.txt";
    {
      std::ofstream o(txt);
      for (const auto& r : cd.train) o << r << "\n";
      if (!o) throw fatal("cannot write '" + txt.string() + "'");
    }
    progress bar("tokenizer", 1);
    const std::string args = "--input=" + txt.string() + " --model_prefix=" + (dir / "spm").string() +
                             " --vocab_size=" + std::to_string(cfg.vocab) +
                             " --model_type=unigram --character_coverage=0.9995 --hard_vocab_limit=false"
                             " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=3 --input_sentence_size=200000"
                             " --shuffle_input_sentence=true --max_sentence_length=8192 --minloglevel=2"
                             " --num_threads=" + std::to_string(cfg.threads);
    spm_tokenizer::train(args, static_cast<unsigned>(cfg.seed));
    fs::remove(txt, ec);
    bar.finish("trained " + model.string());
  }
  auto sp = std::make_unique<spm_tokenizer>(model.string());
  return sp;
}

// ---------------------------------------------------------------------------------------------------------------- model
struct gpt_config {
  int vocab, ctx, dim, layers, heads;
  std::string str() const {
    return "V" + std::to_string(vocab) + "-ctx" + std::to_string(ctx) + "-d" + std::to_string(dim) + "-L" +
           std::to_string(layers) + "-H" + std::to_string(heads);
  }
};

// Per-layer key/value cache for incremental decoding: [B, H, t, D] each.
struct kv_cache {
  std::vector<Tensor> k, v;
};

struct BlockImpl : torch::nn::Module {
  BlockImpl(int dim, int heads, int layers) : heads_(heads) {
    ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
    ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
    qkv = register_module("qkv", torch::nn::Linear(dim, 3 * dim));
    proj = register_module("proj", torch::nn::Linear(dim, dim));
    fc1 = register_module("fc1", torch::nn::Linear(dim, 4 * dim));
    fc2 = register_module("fc2", torch::nn::Linear(4 * dim, dim));
    torch::NoGradGuard ng;
    for (auto* l : {&qkv, &proj, &fc1, &fc2}) {
      torch::nn::init::normal_((*l)->weight, 0.0, 0.02);
      torch::nn::init::zeros_((*l)->bias);
    }
    // GPT-2: residual projections scaled by 1/sqrt(2 * layers).
    proj->weight.mul_(1.0 / std::sqrt(2.0 * layers));
    fc2->weight.mul_(1.0 / std::sqrt(2.0 * layers));
  }
  // x: [B, l, C] at absolute positions pos0 .. pos0 + l - 1. With a cache, keys/values of earlier positions are reused.
  Tensor forward(const Tensor& x, std::int64_t pos0, kv_cache* cache, std::size_t layer) {
    const auto B = x.size(0), l = x.size(1), C = x.size(2), D = C / heads_;
    auto parts = qkv->forward(ln1->forward(x)).view({B, l, 3, heads_, D}).permute({2, 0, 3, 1, 4});
    Tensor q = parts[0], k = parts[1], v = parts[2];  // [B, H, l, D]
    if (cache) {
      if (cache->k.size() <= layer) {
        cache->k.resize(layer + 1);
        cache->v.resize(layer + 1);
      }
      if (cache->k[layer].defined()) {
        k = torch::cat({cache->k[layer], k}, 2);
        v = torch::cat({cache->v[layer], v}, 2);
      }
      cache->k[layer] = k;
      cache->v[layer] = v;
    }
    const auto total = k.size(2);
    Tensor att = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(D)));
    // query i (absolute pos0 + i) sees keys j <= pos0 + i
    Tensor mask = torch::ones({l, total}, torch::kBool).tril(total - l);
    (void)pos0;
    att = att.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
    Tensor y = torch::matmul(torch::softmax(att, -1), v).transpose(1, 2).reshape({B, l, C});
    Tensor h = x + proj->forward(y);
    return h + fc2->forward(torch::gelu(fc1->forward(ln2->forward(h))));
  }
  int heads_;
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  torch::nn::Linear qkv{nullptr}, proj{nullptr}, fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Block);

// A small GPT (pre-LayerNorm, learned positions, tied input/output embeddings). logits: [B, l, V] float32.
struct GPTImpl : torch::nn::Module {
  explicit GPTImpl(const gpt_config& c) : cfg(c) {
    tok = register_module("tok", torch::nn::Embedding(c.vocab, c.dim));
    pos = register_module("pos", torch::nn::Embedding(c.ctx, c.dim));
    for (int i = 0; i < c.layers; ++i) blocks.push_back(register_module("block" + std::to_string(i), Block(c.dim, c.heads, c.layers)));
    lnf = register_module("lnf", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.dim})));
    torch::NoGradGuard ng;
    torch::nn::init::normal_(tok->weight, 0.0, 0.02);
    torch::nn::init::normal_(pos->weight, 0.0, 0.01);
  }
  // idx: [B, l] token ids at positions pos0 ..; last_n > 0 projects only the last last_n positions onto the vocabulary, so
  // the returned logits [B, last_n, V] are contiguous (handed to kd without a copy) and the other rows are never computed.
  Tensor forward(const Tensor& idx, std::int64_t pos0 = 0, kv_cache* cache = nullptr, std::int64_t last_n = 0) {
    const auto l = idx.size(1);
    Tensor p = torch::arange(pos0, pos0 + l, torch::kLong);
    Tensor x = tok->forward(idx) + pos->forward(p).unsqueeze(0);
    for (std::size_t i = 0; i < blocks.size(); ++i) x = blocks[i]->forward(x, pos0, cache, i);
    if (last_n > 0) x = x.narrow(1, l - last_n, last_n);
    return torch::matmul(lnf->forward(x), tok->weight.t());
  }
  std::int64_t parameters_count() {
    std::int64_t n = 0;
    for (const auto& p : parameters()) n += p.numel();
    return n;
  }
  gpt_config cfg;
  torch::nn::Embedding tok{nullptr}, pos{nullptr};
  std::vector<Block> blocks;
  torch::nn::LayerNorm lnf{nullptr};
};
TORCH_MODULE(GPT);

void copy_params(GPT& dst, GPT& src) {
  torch::NoGradGuard ng;
  auto d = dst->named_parameters(), s = src->named_parameters();
  for (auto& kv : s) d[kv.key()].copy_(kv.value());
}

// ---------------------------------------------------------------------------------------------------------------- data
struct dataset {
  std::vector<std::int64_t> stream;              // training records as BOS toks EOS, concatenated (LM batches)
  std::vector<std::vector<int>> train_prompts;   // BOS + first prompt_len tokens of training records
  std::vector<std::vector<int>> held_prompts;    // same, held-out records
  std::vector<std::vector<int>> held_conts;      // the real continuation of each held-out prompt (+ EOS), <= gen_len
  std::vector<std::string> held_prompt_text;
};

dataset build_dataset(const config& cfg, const corpus_data& cd, spm_tokenizer& sp) {
  dataset ds;
  progress bar("tokenize", static_cast<int>(cd.train.size() + cd.heldout.size()));
  int n = 0;
  std::vector<int> ids;
  for (const auto& r : cd.train) {
    sp.Encode(r, &ids);
    ds.stream.push_back(kBos);
    for (int t : ids) ds.stream.push_back(t);
    ds.stream.push_back(kEos);
    if (static_cast<int>(ids.size()) >= cfg.prompt_len + 2) {
      std::vector<int> p{kBos};
      p.insert(p.end(), ids.begin(), ids.begin() + cfg.prompt_len);
      ds.train_prompts.push_back(p);
    }
    bar.update(++n);
  }
  for (const auto& r : cd.heldout) {
    sp.Encode(r, &ids);
    if (static_cast<int>(ids.size()) >= cfg.prompt_len + 2) {
      std::vector<int> p{kBos};
      p.insert(p.end(), ids.begin(), ids.begin() + cfg.prompt_len);
      std::vector<int> c(ids.begin() + cfg.prompt_len, ids.end());
      c.push_back(kEos);
      if (static_cast<int>(c.size()) > cfg.gen_len) c.resize(cfg.gen_len);
      ds.held_prompts.push_back(p);
      ds.held_conts.push_back(c);
      std::vector<int> pt(p.begin() + 1, p.end());
      std::string s;
      sp.Decode(pt, &s);
      ds.held_prompt_text.push_back(s);
    }
    bar.update(++n);
  }
  bar.finish(std::to_string(ds.stream.size()) + " training tokens");
  if (ds.stream.size() < static_cast<std::size_t>(cfg.ctx + 2))
    throw fatal("corpus '" + cfg.corpus + "' is too small: " + std::to_string(ds.stream.size()) + " tokens");
  if (ds.train_prompts.empty() || ds.held_prompts.empty())
    throw fatal("corpus '" + cfg.corpus + "' has no records longer than --prompt-len + 2 tokens in the " +
                (ds.train_prompts.empty() ? "training" : "held-out") + " split");
  return ds;
}

// Random LM windows [B, ctx + 1] from the token stream.
Tensor lm_batch(const dataset& ds, int batch, int ctx, std::mt19937_64& rng) {
  Tensor b = torch::empty({batch, ctx + 1}, torch::kLong);
  auto a = b.accessor<std::int64_t, 2>();
  const std::uint64_t span = ds.stream.size() - ctx - 1;
  for (int i = 0; i < batch; ++i) {
    const std::size_t s = rng() % span;
    for (int j = 0; j <= ctx; ++j) a[i][j] = ds.stream[s + j];
  }
  return b;
}

Tensor prompt_batch(const std::vector<std::vector<int>>& prompts, const std::vector<std::size_t>& idx) {
  const auto P = static_cast<std::int64_t>(prompts[idx[0]].size());
  Tensor b = torch::empty({static_cast<std::int64_t>(idx.size()), P}, torch::kLong);
  auto a = b.accessor<std::int64_t, 2>();
  for (std::size_t i = 0; i < idx.size(); ++i)
    for (std::int64_t j = 0; j < P; ++j) a[i][j] = prompts[idx[i]][j];
  return b;
}

Tensor lm_loss(GPT& m, const Tensor& batch) {
  const auto L = batch.size(1) - 1;
  Tensor logits = m->forward(batch.narrow(1, 0, L));
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), batch.narrow(1, 1, L).reshape({-1}));
}

// ---------------------------------------------------------------------------------------------------------------- sampling
struct generation {
  Tensor tokens;  // [B, P + G] long: prompt, then response (kPad after the first EOS)
  Tensor mask;    // [B, G] float: 1 for response tokens up to and including the first EOS
};

// Samples G tokens after the prompts, with KV caches. policy: softmax of `model`'s logits; when `mix` is given, tokens are
// drawn from alpha softmax(mix) + (1 - alpha) softmax(model) (MiniLLM teacher-mixed sampling).
generation sample(GPT& model, GPT* mix, double alpha, const Tensor& prompts, int G) {
  torch::NoGradGuard ng;
  const auto B = prompts.size(0), P = prompts.size(1);
  kv_cache cm, cx;
  Tensor lm = model->forward(prompts, 0, &cm).select(1, P - 1);
  Tensor lx = mix ? (*mix)->forward(prompts, 0, &cx).select(1, P - 1) : Tensor();
  Tensor out = torch::full({B, G}, kPad, torch::kLong), mask = torch::zeros({B, G});
  Tensor done = torch::zeros({B}, torch::kBool);
  for (int g = 0; g < G; ++g) {
    Tensor probs = torch::softmax(lm, -1);
    if (mix && alpha > 0.0) probs = alpha * torch::softmax(lx, -1) + (1.0 - alpha) * probs;
    Tensor y = torch::multinomial(probs, 1).squeeze(1);
    y = torch::where(done, torch::full_like(y, kPad), y);
    out.select(1, g).copy_(y);
    mask.select(1, g).copy_(done.logical_not().to(torch::kFloat));
    done = done.logical_or(y == kEos);
    if (g + 1 == G || done.all().item<bool>()) break;
    Tensor in = y.unsqueeze(1);
    lm = model->forward(in, P + g, &cm).select(1, 0);
    if (mix) lx = (*mix)->forward(in, P + g, &cx).select(1, 0);
  }
  return {torch::cat({prompts, out}, 1), mask};
}

// Logits predicting the response tokens: positions P - 1 .. P + G - 2 of a forward over the whole sequence, [B, G, V],
// contiguous (only those positions are projected onto the vocabulary).
Tensor response_logits(GPT& m, const Tensor& tokens, int G) {
  const auto L = tokens.size(1);
  Tensor logits = m->forward(tokens.narrow(1, 0, L - 1), 0, nullptr, G);
  TORCH_INTERNAL_ASSERT(logits.is_contiguous());
  return logits;
}

// ---------------------------------------------------------------------------------------------------------------- metrics
struct eval_result {
  double heldout_nll = 0;       // nats/token of the real held-out continuation under the model
  double teacher_nll = 0;       // nats/token of the model's own samples under the teacher
  double seq_rkl = 0;           // nats/sequence: sum_t KL(q_t || p_t) along the model's samples (exact per step)
  double seq_rkl_mc = 0;        // nats/sequence: sum_t log q(y_t) - log p(y_t) (single-sample Monte Carlo)
  double distinct2 = 0, distinct3 = 0;
  double mean_len = 0;          // response tokens (including EOS)
  std::vector<std::string> samples;
};

double heldout_nll(GPT& m, const dataset& ds, std::size_t n, int G) {
  torch::NoGradGuard ng;
  double tot = 0, cnt = 0;
  const std::size_t bs = 64;
  for (std::size_t s = 0; s < n; s += bs) {
    const std::size_t e = std::min(n, s + bs);
    const auto P = ds.held_prompts[s].size();
    Tensor tok = torch::full({static_cast<std::int64_t>(e - s), static_cast<std::int64_t>(P + G)}, kPad, torch::kLong);
    Tensor mask = torch::zeros({static_cast<std::int64_t>(e - s), G});
    for (std::size_t i = s; i < e; ++i) {
      for (std::size_t j = 0; j < P; ++j) tok[i - s][j] = ds.held_prompts[i][j];
      for (std::size_t j = 0; j < ds.held_conts[i].size(); ++j) {
        tok[i - s][P + j] = ds.held_conts[i][j];
        mask[i - s][j] = 1.0;
      }
    }
    Tensor lp = torch::log_softmax(response_logits(m, tok, G), -1);
    Tensor tgt = tok.narrow(1, P, G);
    Tensor nll = -lp.gather(2, tgt.unsqueeze(2)).squeeze(2);
    tot += (nll * mask).sum().item<double>();
    cnt += mask.sum().item<double>();
  }
  return tot / std::max(cnt, 1.0);
}

void distinct_n(const std::vector<std::vector<std::string>>& words, double& d2, double& d3) {
  for (int n : {2, 3}) {
    std::set<std::string> uniq;
    std::size_t total = 0;
    for (const auto& w : words)
      for (std::size_t i = 0; i + n <= w.size(); ++i) {
        std::string g;
        for (int k = 0; k < n; ++k) g += w[i + k] + '\x1f';
        uniq.insert(g);
        ++total;
      }
    (n == 2 ? d2 : d3) = total ? static_cast<double>(uniq.size()) / total : 0.0;
  }
}

eval_result evaluate(GPT& m, GPT& teacher, const dataset& ds, spm_tokenizer& sp, std::size_t n,
                     int G, std::uint64_t seed, int samples_kept, bool full) {
  torch::NoGradGuard ng;
  eval_result r;
  r.heldout_nll = heldout_nll(m, ds, n, G);
  torch::manual_seed(seed);
  double tnll = 0, tok = 0, rkl = 0, mc = 0, len = 0;
  std::vector<std::vector<std::string>> words;
  const std::size_t bs = 64;
  for (std::size_t s = 0; s < n; s += bs) {
    std::vector<std::size_t> idx;
    for (std::size_t i = s; i < std::min(n, s + bs); ++i) idx.push_back(i);
    Tensor prompts = prompt_batch(ds.held_prompts, idx);
    generation gen = sample(m, nullptr, 0.0, prompts, G);
    Tensor ls = torch::log_softmax(response_logits(m, gen.tokens, G), -1);
    Tensor lt = torch::log_softmax(response_logits(teacher, gen.tokens, G), -1);
    Tensor y = gen.tokens.narrow(1, prompts.size(1), G).unsqueeze(2);
    Tensor lpt = lt.gather(2, y).squeeze(2), lqs = ls.gather(2, y).squeeze(2);
    tnll += -(lpt * gen.mask).sum().item<double>();
    tok += gen.mask.sum().item<double>();
    mc += ((lqs - lpt) * gen.mask).sum().item<double>();
    // Exact per-step reverse KL(q_t || p_t) over the vocabulary, computed by kd (per-row values).
    Tensor per_row = kdt::divergence_per_row(kd::divergence::reverse_kl(), ls, lt).view({-1, G});
    rkl += (per_row * gen.mask).sum().item<double>();
    len += gen.mask.sum().item<double>();
    if (full) {
      auto acc = gen.tokens.accessor<std::int64_t, 2>();
      for (std::size_t i = 0; i < idx.size(); ++i) {
        std::vector<int> resp;
        for (int g = 0; g < G; ++g) {
          const auto t = acc[i][prompts.size(1) + g];
          if (t == kEos || t == kPad) break;
          resp.push_back(static_cast<int>(t));
        }
        std::string text;
        sp.Decode(resp, &text);
        std::istringstream ws(text);
        std::vector<std::string> w{std::istream_iterator<std::string>(ws), std::istream_iterator<std::string>()};
        words.push_back(w);
        if (static_cast<int>(r.samples.size()) < samples_kept) r.samples.push_back(text);
      }
    }
  }
  r.teacher_nll = tnll / std::max(tok, 1.0);
  r.seq_rkl = rkl / n;
  r.seq_rkl_mc = mc / n;
  r.mean_len = len / n;
  if (full) distinct_n(words, r.distinct2, r.distinct3);
  return r;
}

// ---------------------------------------------------------------------------------------------------------------- logging
struct log_row {
  std::string phase, method;
  int step;
  double loss, aux1, aux2, lr, grad_norm, elapsed;
};

struct curve_point {
  std::string method;
  int step;
  double heldout_nll, seq_rkl;
};

// ---------------------------------------------------------------------------------------------------------------- SVG plot
struct series {
  std::string name, color;
  std::vector<std::pair<double, double>> pts;
};

std::string esc(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '<') o += "&lt;";
    else if (ch == '>') o += "&gt;";
    else if (ch == '&') o += "&amp;";
    else o += ch;
  }
  return o;
}

// One line chart in the box (x0, y0, w, h) of an SVG document.
void svg_lines(std::ostream& o, double x0, double y0, double w, double h, const std::string& title, const std::string& xl,
               const std::vector<series>& ss) {
  double xmin = 1e300, xmax = -1e300, ymin = 1e300, ymax = -1e300;
  for (const auto& s : ss)
    for (auto [x, y] : s.pts) {
      if (!std::isfinite(y)) continue;
      xmin = std::min(xmin, x), xmax = std::max(xmax, x), ymin = std::min(ymin, y), ymax = std::max(ymax, y);
    }
  if (xmin > xmax) xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  if (xmax == xmin) xmax = xmin + 1;
  if (ymax == ymin) ymax = ymin + 1;
  const double pad = 0.05 * (ymax - ymin);
  ymin -= pad, ymax += pad;
  const double L = x0 + 55, R = x0 + w - 10, T = y0 + 28, B = y0 + h - 35;
  auto X = [&](double x) { return L + (x - xmin) / (xmax - xmin) * (R - L); };
  auto Y = [&](double y) { return B - (y - ymin) / (ymax - ymin) * (B - T); };
  o << "<text x='" << x0 + w / 2 << "' y='" << y0 + 16 << "' text-anchor='middle' font-weight='bold'>" << esc(title)
    << "</text>\n";
  o << "<rect x='" << L << "' y='" << T << "' width='" << R - L << "' height='" << B - T
    << "' fill='none' stroke='#888'/>\n";
  for (int i = 0; i <= 4; ++i) {
    const double yv = ymin + (ymax - ymin) * i / 4, xv = xmin + (xmax - xmin) * i / 4;
    o << "<text x='" << L - 4 << "' y='" << Y(yv) + 4 << "' text-anchor='end' font-size='10'>" << fmt("%.3g", yv)
      << "</text>\n";
    o << "<line x1='" << L << "' x2='" << R << "' y1='" << Y(yv) << "' y2='" << Y(yv) << "' stroke='#eee'/>\n";
    o << "<text x='" << X(xv) << "' y='" << B + 14 << "' text-anchor='middle' font-size='10'>" << fmt("%.0f", xv)
      << "</text>\n";
  }
  o << "<text x='" << (L + R) / 2 << "' y='" << B + 28 << "' text-anchor='middle' font-size='11'>" << esc(xl)
    << "</text>\n";
  int li = 0;
  for (const auto& s : ss) {
    if (s.pts.empty()) continue;
    o << "<polyline fill='none' stroke-width='1.5' stroke='" << s.color << "' points='";
    for (auto [x, y] : s.pts)
      if (std::isfinite(y)) o << X(x) << "," << Y(y) << " ";
    o << "'/>\n";
    o << "<text x='" << R - 4 << "' y='" << T + 14 + 13 * li++ << "' text-anchor='end' font-size='11' fill='" << s.color
      << "'>" << esc(s.name) << "</text>\n";
  }
}

// One bar chart (one bar per name) in the box (x0, y0, w, h).
void svg_bars(std::ostream& o, double x0, double y0, double w, double h, const std::string& title,
              const std::vector<std::tuple<std::string, std::string, double>>& bars) {
  double ymax = 0;
  for (auto& [n, c, v] : bars) ymax = std::max(ymax, v);
  if (ymax <= 0) ymax = 1;
  const double L = x0 + 20, R = x0 + w - 10, T = y0 + 28, B = y0 + h - 35;
  o << "<text x='" << x0 + w / 2 << "' y='" << y0 + 16 << "' text-anchor='middle' font-weight='bold'>" << esc(title)
    << "</text>\n";
  const double bw = (R - L) / std::max<std::size_t>(bars.size(), 1);
  int i = 0;
  for (auto& [n, c, v] : bars) {
    const double x = L + bw * i++ + bw * 0.15, hh = std::max(0.0, v) / ymax * (B - T);
    o << "<rect x='" << x << "' y='" << B - hh << "' width='" << bw * 0.7 << "' height='" << hh << "' fill='" << c
      << "'/>\n";
    o << "<text x='" << x + bw * 0.35 << "' y='" << B - hh - 3 << "' text-anchor='middle' font-size='10'>"
      << fmt("%.3g", v) << "</text>\n";
    o << "<text x='" << x + bw * 0.35 << "' y='" << B + 14 << "' text-anchor='middle' font-size='11'>" << esc(n)
      << "</text>\n";
  }
  o << "<line x1='" << L << "' x2='" << R << "' y1='" << B << "' y2='" << B << "' stroke='#888'/>\n";
}

const std::map<std::string, std::string> kColor = {{"teacher", "#444444"}, {"init", "#999999"}, {"seqkd", "#1f77b4"},
                                                  {"rkl", "#ff7f0e"},     {"minillm", "#2ca02c"}, {"gkd", "#d62728"}};

}  // namespace

// ---------------------------------------------------------------------------------------------------------------- main run
namespace {

struct trainer {
  config cfg;
  corpus_data cd;
  std::unique_ptr<spm_tokenizer> sp;
  std::string tok_key;
  dataset ds;
  std::vector<log_row> log;
  std::vector<curve_point> curves;
  clock_type::time_point t0 = clock_type::now();

  gpt_config teacher_cfg() const {
    return {sp->GetPieceSize(), cfg.ctx, cfg.teacher_dim, cfg.teacher_layers, cfg.teacher_heads};
  }
  gpt_config student_cfg() const {
    return {sp->GetPieceSize(), cfg.ctx, cfg.student_dim, cfg.student_layers, cfg.student_heads};
  }

  static double lr_at(double base, int step, int total) {  // 5% warmup, cosine to 10%
    const int warm = std::max(1, total / 20);
    if (step < warm) return base * (step + 1) / warm;
    const double t = static_cast<double>(step - warm) / std::max(1, total - warm);
    return base * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * t)));
  }

  // LM training (teacher, and the common student pre-training). Returns per-step losses.
  std::vector<double> train_lm(GPT& m, int steps, int batch, double lr, const std::string& name, std::uint64_t seed) {
    torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(lr).betas({0.9, 0.95}).weight_decay(0.01));
    std::mt19937_64 rng(seed);
    progress bar(name, steps);
    std::vector<double> losses;
    double ema = 0;
    for (int s = 0; s < steps; ++s) {
      const double cur = lr_at(lr, s, steps);
      for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(cur);
      Tensor loss = lm_loss(m, lm_batch(ds, batch, cfg.ctx, rng));
      opt.zero_grad();
      loss.backward();
      const double gn = torch::nn::utils::clip_grad_norm_(m->parameters(), 1.0);
      opt.step();
      const double l = loss.item<double>();
      losses.push_back(l);
      ema = s == 0 ? l : 0.95 * ema + 0.05 * l;
      log.push_back({name, name, s, l, 0, 0, cur, gn, seconds_since(t0)});
      bar.update(s + 1, "loss " + fmt("%.3f", ema));
    }
    bar.finish("loss " + fmt("%.3f", ema));
    return losses;
  }

  GPT get_teacher() {
    GPT t(teacher_cfg());
    fs::path ckpt;
    if (!cfg.teacher_ckpt.empty()) {
      ckpt = cfg.teacher_ckpt;
      if (!fs::exists(ckpt)) throw fatal("teacher checkpoint '" + ckpt.string() + "' does not exist");
    } else {
      const std::string key = hex(fnv1a("teacher v1 " + teacher_cfg().str() + " steps=" + std::to_string(cfg.teacher_steps) +
                                            " batch=" + std::to_string(cfg.teacher_batch) + " lr=" + fmt("%g", cfg.teacher_lr) +
                                            " seed=" + std::to_string(cfg.seed),
                                        fnv1a(tok_key)));
      ckpt = fs::path(cfg.cache) / ("teacher-" + key + ".pt");
    }
    // --smoke always trains its (tiny) teacher, so the smoke test checks that the teacher's loss goes down.
    if (fs::exists(ckpt) && (!cfg.smoke || !cfg.teacher_ckpt.empty())) {
      try {
        torch::load(t, ckpt.string());
      } catch (const c10::Error& e) {
        throw fatal("cannot read teacher checkpoint '" + ckpt.string() +
                    "' (corrupt, or trained with other sizes/tokenizer; delete it or pass matching flags)");
      }
      std::fprintf(stderr, "teacher: loaded %s (%lld parameters)\n", ckpt.string().c_str(),
                   static_cast<long long>(t->parameters_count()));
      return t;
    }
    std::fprintf(stderr, "teacher: %s, %lld parameters, training %d steps\n", teacher_cfg().str().c_str(),
                 static_cast<long long>(t->parameters_count()), cfg.teacher_steps);
    torch::manual_seed(cfg.seed);
    GPT fresh(teacher_cfg());
    t = fresh;
    train_lm(t, cfg.teacher_steps, cfg.teacher_batch, cfg.teacher_lr, "teacher", cfg.seed + 1);
    std::error_code ec;
    fs::create_directories(ckpt.parent_path(), ec);
    torch::save(t, ckpt.string());
    return t;
  }

  // One distillation run from the common student init. Returns the trained student.
  GPT distill(const std::string& method, GPT& init, GPT& teacher) {
    GPT s(student_cfg());
    copy_params(s, init);
    teacher->eval();
    torch::optim::AdamW opt(s->parameters(), torch::optim::AdamWOptions(cfg.student_lr).betas({0.9, 0.95}).weight_decay(0.0));
    std::mt19937_64 prng(cfg.seed * 31 + 5);    // same prompt batches for every method
    std::mt19937_64 lrng(cfg.seed * 131 + 7);   // LM batches (MiniLLM's language-modeling term)
    torch::manual_seed(cfg.seed * 1009 + 3);    // sampling
    const int G = cfg.gen_len;
    progress bar(method, cfg.steps);
    double ema = 0;
    auto monitor = [&](int step) {
      const std::size_t n = std::min<std::size_t>(cfg.monitor_prompts, ds.held_prompts.size());
      eval_result r = evaluate(s, teacher, ds, *sp, n, G, cfg.seed + 99, 0, false);
      curves.push_back({method, step, r.heldout_nll, r.seq_rkl});
      torch::manual_seed(cfg.seed * 1009 + 3 + step);  // sampling stream independent of monitoring
    };
    monitor(0);
    for (int step = 0; step < cfg.steps; ++step) {
      std::vector<std::size_t> idx(cfg.batch);
      for (auto& i : idx) i = prng() % ds.train_prompts.size();
      Tensor prompts = prompt_batch(ds.train_prompts, idx);
      Tensor loss;
      double aux1 = 0, aux2 = 0;
      if (method == "seqkd" || method == "rkl") {
        // Responses generated by the teacher (SeqKD data); token-level divergence at every response position.
        generation gen = sample(teacher, nullptr, 0.0, prompts, G);
        Tensor tl;
        {
          torch::NoGradGuard ng;
          tl = response_logits(teacher, gen.tokens, G);
        }
        Tensor sl = response_logits(s, gen.tokens, G);
        Tensor w = gen.mask.reshape({-1}).contiguous();
        loss = method == "seqkd" ? kdt::forward_kl(sl, tl, w) : kdt::reverse_kl(sl, tl, w);
      } else if (method == "gkd") {
        // On-policy: responses sampled from the student; generalized JSD(beta) at every response position.
        generation gen = sample(s, nullptr, 0.0, prompts, G);
        Tensor tl;
        {
          torch::NoGradGuard ng;
          tl = response_logits(teacher, gen.tokens, G);
        }
        Tensor sl = response_logits(s, gen.tokens, G);
        loss = kdt::jsd(sl, tl, cfg.gkd_beta, gen.mask.reshape({-1}).contiguous());
      } else {  // minillm
        generation gen = sample(s, &teacher, cfg.alpha, prompts, G);
        Tensor tl;
        {
          torch::NoGradGuard ng;
          tl = response_logits(teacher, gen.tokens, G);
        }
        Tensor sl = response_logits(s, gen.tokens, G);
        Tensor y = gen.tokens.narrow(1, prompts.size(1), G).contiguous();
        // One fused kd call: single-step reverse KL (exact over the vocabulary) + long-term policy gradient with
        // length-normalized returns (paper Eq. 6) and per-token importance weights for teacher-mixed sampling.
        kd::pg_options po = cfg.pg_variant == "paper" ? kd::pg_options::paper() : kd::pg_options::reference_code();
        po.alpha = cfg.alpha;
        po.clip_range = cfg.pg_clip;
        po.reward_scale = cfg.pg_reward_scale;  // default 0: one on-policy update per rollout, the ratio is the importance weight
        kd::pg_diagnostics diag;
        Tensor pg = kdt::policy_gradient(sl, tl, y, gen.mask.contiguous(), po, &diag);
        aux1 = diag.token_reverse_kl;
        Tensor lm = lm_loss(s, lm_batch(ds, cfg.batch, cfg.ctx, lrng));
        loss = pg + cfg.lm_weight * lm;
        aux2 = lm.item<double>();
      }
      opt.zero_grad();
      loss.backward();
      const double gn = torch::nn::utils::clip_grad_norm_(s->parameters(), 1.0);  // norm before clipping
      opt.step();
      const double l = loss.item<double>();
      if (!std::isfinite(l)) throw fatal(method + ": loss is not finite at step " + std::to_string(step));
      ema = step == 0 ? l : 0.9 * ema + 0.1 * l;
      log.push_back({"distill", method, step, l, aux1, aux2, cfg.student_lr, gn, seconds_since(t0)});
      if ((step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps) monitor(step + 1);
      bar.update(step + 1, "loss " + fmt("%.4f", ema));
    }
    bar.finish("loss " + fmt("%.4f", ema));
    return s;
  }
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ','))
    if (!x.empty()) out.push_back(x);
  return out;
}

int run(int argc, char** argv) {
  trainer tr;
  tr.cfg = parse_args(argc, argv);
  config& cfg = tr.cfg;
  const auto methods = split_list(cfg.methods);
  for (const auto& m : methods)
    if (m != "seqkd" && m != "rkl" && m != "minillm" && m != "gkd")
      throw usage_error("unknown method '" + m + "' in --methods (seqkd, rkl, minillm, gkd)");
  if (methods.empty()) throw usage_error("--methods is empty");

  torch::set_num_threads(cfg.threads);
  torch::manual_seed(cfg.seed);
  std::fprintf(stderr, "minillm: corpus %s, seed %llu, %d threads (torch intra-op, BLAS: %s)\n", cfg.corpus.c_str(),
               static_cast<unsigned long long>(cfg.seed), torch::get_num_threads(),
               at::hasMKL() ? "MKL" : "system BLAS (Debian: OpenBLAS)");

  tr.cd = load_corpus(cfg);
  std::fprintf(stderr, "corpus: %zu files, %zu training records, %zu held-out records\n", tr.cd.files, tr.cd.train.size(),
               tr.cd.heldout.size());
  {
    std::error_code ec;
    fs::create_directories(cfg.out, ec);
    if (ec) throw fatal("cannot create output folder '" + cfg.out + "': " + ec.message());
  }
  tr.sp = load_tokenizer(cfg, tr.cd, tr.tok_key);
  tr.ds = build_dataset(cfg, tr.cd, *tr.sp);
  std::fprintf(stderr, "tokenizer: %d pieces; %zu training prompts, %zu held-out prompts\n", tr.sp->GetPieceSize(),
               tr.ds.train_prompts.size(), tr.ds.held_prompts.size());

  const double t_teacher0 = seconds_since(tr.t0);
  GPT teacher = tr.get_teacher();
  teacher->eval();
  for (auto& p : teacher->parameters()) p.set_requires_grad(false);
  const double t_teacher = seconds_since(tr.t0) - t_teacher0;

  // One common student initialisation: seeded init + a short LM pre-training on the corpus.
  torch::manual_seed(cfg.seed + 2);
  GPT init(tr.student_cfg());
  std::fprintf(stderr, "student: %s, %lld parameters\n", tr.student_cfg().str().c_str(),
               static_cast<long long>(init->parameters_count()));
  if (cfg.student_pre_steps > 0)
    tr.train_lm(init, cfg.student_pre_steps, cfg.batch, cfg.teacher_lr, "student-init", cfg.seed + 3);

  std::map<std::string, GPT> students;
  std::map<std::string, double> train_time;
  for (const auto& m : methods) {
    const double a = seconds_since(tr.t0);
    students.emplace(m, tr.distill(m, init, teacher));
    train_time[m] = seconds_since(tr.t0) - a;
  }

  // Final evaluation on held-out prompts.
  const std::size_t n_eval = std::min<std::size_t>(cfg.eval_prompts, tr.ds.held_prompts.size());
  std::vector<std::string> rows{"teacher", "init"};
  rows.insert(rows.end(), methods.begin(), methods.end());
  std::map<std::string, eval_result> res;
  {
    progress bar("evaluate", static_cast<int>(rows.size()));
    int i = 0;
    for (const auto& r : rows) {
      GPT& m = r == "teacher" ? teacher : r == "init" ? init : students.at(r);
      res[r] = evaluate(m, teacher, tr.ds, *tr.sp, n_eval, cfg.gen_len, cfg.seed + 1234, cfg.samples_shown, true);
      bar.update(++i, r);
    }
    bar.finish();
  }
  const double wall = seconds_since(tr.t0);

  // ---- outputs
  const fs::path out(cfg.out);
  std::ostringstream table;
  table << "| model | held-out NLL (nats/token) | teacher NLL of samples (nats/token) | seq. reverse KL (nats/seq) | "
           "seq. RKL, MC (nats/seq) | distinct-2 | distinct-3 | mean length | train time (s) |\n"
        << "|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : rows) {
    const auto& e = res[r];
    const double tt = r == "teacher" ? t_teacher : train_time.count(r) ? train_time[r] : 0.0;
    table << "| " << r << " | " << fmt("%.3f", e.heldout_nll) << " | " << fmt("%.3f", e.teacher_nll) << " | "
          << fmt("%.3f", e.seq_rkl) << " | " << fmt("%.3f", e.seq_rkl_mc) << " | " << fmt("%.3f", e.distinct2) << " | "
          << fmt("%.3f", e.distinct3) << " | " << fmt("%.1f", e.mean_len) << " | " << fmt("%.1f", tt) << " |\n";
  }
  std::ostringstream head;
  head << "minillm summary: " << n_eval << " held-out prompts, " << cfg.prompt_len << " prompt tokens, up to "
       << cfg.gen_len << " sampled tokens (temperature 1); teacher " << tr.teacher_cfg().str() << " ("
       << teacher->parameters_count() << " params), student " << tr.student_cfg().str() << " (" << init->parameters_count()
       << " params); " << cfg.steps << " distillation steps x " << cfg.batch << " prompts per method; seed " << cfg.seed
       << "; wall time " << fmt("%.1f", wall) << " s\n";
  std::cout << "\n" << head.str() << "\n" << table.str() << std::flush;

  std::ostringstream samples;
  for (std::size_t i = 0; i < static_cast<std::size_t>(cfg.samples_shown) && i < n_eval; ++i) {
    samples << "prompt: " << tr.ds.held_prompt_text[i] << " ...\n";
    std::string real;
    std::vector<int> c = tr.ds.held_conts[i];
    if (!c.empty() && c.back() == kEos) c.pop_back();
    tr.sp->Decode(c, &real);
    samples << "  real     : " << real << "\n";
    for (const auto& r : rows)
      if (i < res[r].samples.size()) samples << "  " << std::left << std::setw(9) << r << ": " << res[r].samples[i] << "\n";
  }
  std::cout << "\n" << samples.str();

  auto write = [&](const fs::path& p, const std::string& text) {
    std::ofstream o(p);
    o << text;
    if (!o) throw fatal("cannot write '" + p.string() + "'");
  };
  write(out / "summary.md", head.str() + "\n" + table.str());
  write(out / "samples.txt", samples.str());
  {
    std::ostringstream csv;
    // aux1: MiniLLM's mean token reverse KL on its samples; aux2: its LM loss; grad_norm: before clipping to 1.
    csv << "phase,method,step,loss,aux1,aux2,lr,grad_norm,elapsed_s\n";
    for (const auto& l : tr.log)
      csv << l.phase << "," << l.method << "," << l.step << "," << fmt("%.6g", l.loss) << "," << fmt("%.6g", l.aux1)
          << "," << fmt("%.6g", l.aux2) << "," << fmt("%.6g", l.lr) << "," << fmt("%.6g", l.grad_norm) << ","
          << fmt("%.3f", l.elapsed) << "\n";
    write(out / "train_log.csv", csv.str());
    std::ostringstream ev;
    ev << "method,step,heldout_nll,seq_rkl\n";
    for (const auto& c : tr.curves)
      ev << c.method << "," << c.step << "," << fmt("%.6g", c.heldout_nll) << "," << fmt("%.6g", c.seq_rkl) << "\n";
    write(out / "monitor.csv", ev.str());
    std::ostringstream fe;
    fe << "model,heldout_nll,teacher_nll,seq_rkl,seq_rkl_mc,distinct2,distinct3,mean_len\n";
    for (const auto& r : rows) {
      const auto& e = res[r];
      fe << r << "," << e.heldout_nll << "," << e.teacher_nll << "," << e.seq_rkl << "," << e.seq_rkl_mc << ","
         << e.distinct2 << "," << e.distinct3 << "," << e.mean_len << "\n";
    }
    write(out / "eval.csv", fe.str());
  }
  {
    // Plot: teacher LM loss; distillation loss per method; monitored held-out NLL and sequence RKL; final metrics.
    std::ostringstream svg;
    const double W = 460, H = 280;
    svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << 4 * W << "' height='" << 2 * H
        << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
    std::vector<series> lm, dl, hn, sr, gn;
    for (std::string ph : {"teacher", "student-init"}) {
      series s{ph, ph == "teacher" ? "#444444" : "#999999", {}};
      double e = 0;
      int k = 0;
      for (const auto& l : tr.log)
        if (l.phase == ph) {
          e = k++ == 0 ? l.loss : 0.95 * e + 0.05 * l.loss;
          s.pts.push_back({double(l.step), e});
        }
      lm.push_back(s);
    }
    for (const auto& m : methods) {
      // MiniLLM's total loss is dominated by its LM term (~5 nats): plot its single-step token reverse KL instead, so the
      // panel compares divergences on one scale.
      series a{m == "minillm" ? "minillm (token RKL term)" : m, kColor.at(m), {}}, b{m, kColor.at(m), {}},
          c{m, kColor.at(m), {}}, g{m, kColor.at(m), {}};
      double e = 0, eg = 0;
      int k = 0;
      for (const auto& l : tr.log)
        if (l.method == m) {
          const double v = m == "minillm" ? l.aux1 : l.loss;
          e = k == 0 ? v : 0.9 * e + 0.1 * v;
          eg = k++ == 0 ? l.grad_norm : 0.9 * eg + 0.1 * l.grad_norm;
          a.pts.push_back({double(l.step), e});
          g.pts.push_back({double(l.step), eg});
        }
      for (const auto& cp : tr.curves)
        if (cp.method == m) {
          b.pts.push_back({double(cp.step), cp.heldout_nll});
          c.pts.push_back({double(cp.step), cp.seq_rkl});
        }
      gn.push_back(g);
      dl.push_back(a), hn.push_back(b), sr.push_back(c);
    }
    svg_lines(svg, 0, 0, W, H, "LM training loss (nats/token, EMA)", "step", lm);
    svg_lines(svg, W, 0, W, H, "distillation loss, own divergence (nats/token, EMA)", "step", dl);
    svg_lines(svg, 2 * W, 0, W, H, "held-out NLL (nats/token)", "distillation step", hn);
    svg_lines(svg, 0, H, W, H, "seq. reverse KL on student samples (nats/seq)", "distillation step", sr);
    std::vector<std::tuple<std::string, std::string, double>> b1, b2, b3;
    for (const auto& r : rows) {
      b1.emplace_back(r, kColor.at(r), res[r].teacher_nll);
      b2.emplace_back(r, kColor.at(r), res[r].heldout_nll);
      b3.emplace_back(r, kColor.at(r), res[r].seq_rkl);
    }
    svg_bars(svg, W, H, W, H, "final: teacher NLL of samples (lower = more teacher-like)", b1);
    svg_bars(svg, 2 * W, H, W, H, "final: held-out NLL of real text", b2);
    svg_lines(svg, 3 * W, 0, W, H, "gradient norm before clipping to 1 (EMA)", "distillation step", gn);
    svg_bars(svg, 3 * W, H, W, H, "final: seq. reverse KL to the teacher (nats/seq)", b3);
    svg << "</svg>\n";
    write(out / "curves.svg", svg.str());
  }
  std::fprintf(stderr, "wrote %s/{summary.md,samples.txt,train_log.csv,monitor.csv,eval.csv,curves.svg}; wall %.1f s\n",
               cfg.out.c_str(), wall);

  if (cfg.smoke) {
    // Wiring checks: the teacher's LM loss and every method's distillation signal go down, outputs exist.
    auto mean = [](const std::vector<double>& v, std::size_t a, std::size_t b) {
      double s = 0;
      for (std::size_t i = a; i < b; ++i) s += v[i];
      return s / std::max<std::size_t>(1, b - a);
    };
    std::vector<double> tl;
    for (const auto& l : tr.log)
      if (l.phase == "teacher") tl.push_back(l.loss);
    if (tl.size() >= 6 && !(mean(tl, tl.size() * 2 / 3, tl.size()) < mean(tl, 0, tl.size() / 3)))
      throw fatal("smoke: the teacher's LM loss did not go down");
    for (const auto& m : methods) {
      double first = NAN, last = NAN;
      for (const auto& c : tr.curves)
        if (c.method == m) {
          if (std::isnan(first)) first = c.seq_rkl;
          last = c.seq_rkl;
        }
      std::fprintf(stderr, "smoke: %s sequence reverse KL %.3f -> %.3f nats\n", m.c_str(), first, last);
      if (!(last < first)) throw fatal("smoke: " + m + " did not reduce the sequence reverse KL to the teacher");
    }
    for (const char* f : {"summary.md", "samples.txt", "train_log.csv", "monitor.csv", "eval.csv", "curves.svg"})
      if (!fs::exists(out / f) || fs::file_size(out / f) == 0) throw fatal(std::string("smoke: output missing: ") + f);
    std::fprintf(stderr, "smoke: ok\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // libgomp (torch's intra-op threads) busy-waits between parallel regions by default; on a machine with as many busy
  // processes as cores that makes 2 threads ~5x slower than 1. It reads OMP_WAIT_POLICY when it is loaded, before main, so
  // set it (and OpenBLAS's thread count, from --threads) and re-execute once. An explicit environment setting wins.
  if (!std::getenv("MINILLM_REEXEC")) {
    std::string threads = "2";
    for (int i = 1; i + 1 < argc; ++i)
      if (std::string(argv[i]) == "--threads") threads = argv[i + 1];
    setenv("MINILLM_REEXEC", "1", 1);
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    setenv("OPENBLAS_NUM_THREADS", threads.c_str(), 0);
    execv("/proc/self/exe", argv);  // returns only on failure: then run as is
  }
  try {
    return run(argc, argv);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "minillm: error: %s\n", e.what());
    return 2;
  } catch (const fatal& e) {
    std::fprintf(stderr, "minillm: error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::string m = e.what_without_backtrace();
    std::replace(m.begin(), m.end(), '\n', ' ');
    std::fprintf(stderr, "minillm: error: torch: %s\n", m.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::string m = e.what();
    std::replace(m.begin(), m.end(), '\n', ' ');
    std::fprintf(stderr, "minillm: error: %s\n", m.c_str());
    return 1;
  }
}
