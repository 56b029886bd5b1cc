"""The tiny-GPT distillation example (python/examples/tiny_gpt.py) as a smoke test: a teacher trained for a few steps,
four students distilled with kd's losses (forward KL, reverse KL, TRL's GJSD drop-in, MiniLLM policy gradient + LM
term); every loss finite, every student closer to the teacher on held-out text than before."""
import importlib.util
import math
import os


def test_tiny_gpt_smoke(capsys):
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "tiny_gpt.py")
    spec = importlib.util.spec_from_file_location("tiny_gpt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = mod.main(["--smoke"])
    assert set(results) == {"fkl", "rkl", "gkd", "minillm"}
    for method, (before, after, hist) in results.items():
        assert all(math.isfinite(h) for h in hist), method
        assert after < before, (method, before, after)
