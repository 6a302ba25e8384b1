"""An optional LLM judge, reached through any OpenAI-compatible `/chat/completions` endpoint,
that maps the answers rule-based extraction cannot read onto an option letter or yes/no.

Off unless `--judge-url` is given; uses only the standard library (urllib), temperature 0.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from tilevl.errors import ConfigError
from tilevl.eval.metrics import extract_choice

# VLMEvalKit vlmeval/dataset/utils/multiple_choice.py `build_prompt` (the choice-matching
# judge MMBench results are reported with); kept verbatim, typos included, so a judge
# sees what it sees there.
CHOICE_TEMPLATE = (
    "You are an AI assistant who will help me to match "
    "an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, "
    "and you need to find which option is most similar to the answer. "
    "If the meaning of all options are significantly different from the answer, output Z. "
    "Your should output a single uppercase character in A, B, C, D (if they are valid options), and Z. \n"
    "Example 1: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\nYour output: A\n"
    "Example 2: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: Spider\nYour output: Z\n"
    "Example 3: \n"
    "Question: {}?\nOptions: {}\nAnswer: {}\nYour output: "
)
# VLMEvalKit vlmeval/dataset/utils/yorn.py `build_prompt` (HallusionBench, MME judge).
YES_NO_TEMPLATE = (
    "You are an AI assistant who will help me to match an answer with two options of a question. "
    "The options are only Yes / No. "
    "You are provided with a question and an answer, "
    "and you need to find which option (Yes / No) is most similar to the answer. "
    "If the meaning of all options are significantly different from the answer, output Unknown. "
    "Your should output a single word among the following 3 choices: Yes, No, Unknown.\n"
    "Example 1: \n"
    "Question: Is the word in this image 'Hello'?\nAnswer: The word in this image is 'Hello'.\n"
    "Your output: Yes\n"
    "Example 2: \n"
    "Question: Is the word in this image 'Hello'?\n"
    "Answer: The word in this image is not 'Hello'.\nYour output: No\n"
    "Example 3: \n"
    "Question: {}?\nAnswer: {}\nYour output: "
)


class Judge:
    """A chat model behind an OpenAI-compatible endpoint, asked to read one answer at a time.

    Args:
        url: the API base (`http://127.0.0.1:8000/v1`) or the full `/chat/completions` URL.
        model: the model name sent in the request.
        api_key: sent as a Bearer token when given.
        retries: attempts per question before the answer is left undecided.
        timeout: seconds per HTTP request.
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, retries: int = 3,
                 timeout: float = 60.0):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--judge-url must be an http(s) URL, got {url!r}")
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.retries = max(1, retries)
        self.timeout = timeout
        self.asked = 0
        self.decided = 0
        self.errors: list[str] = []

    def complete(self, prompt: str) -> str:
        """One greedy completion of `prompt` (a single user message).

        Args:
            prompt: the judge prompt.

        Returns:
            The reply text ("" when every attempt failed; the error is kept in `errors`).
        """
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 16,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                return str(reply["choices"][0]["message"]["content"] or "")
            except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(min(2.0, 0.2 * 2 ** attempt))
        self.errors.append(last)
        return ""

    def choose(self, question: str, options: dict[str, str], prediction: str) -> str | None:
        """Which option an answer means, or None when the judge says none (Z) or fails.

        Args:
            question: the question text.
            options: letter → option text.
            prediction: the model's unreadable answer.

        Returns:
            The option letter, or None.
        """
        listed = " ".join(f"{k}. {v}" for k, v in options.items())
        self.asked += 1
        reply = self.complete(CHOICE_TEMPLATE.format(question.rstrip("?"), listed, prediction))
        # VLMEvalKit reads the judge's reply with the same rule-based matcher.
        letter = extract_choice(reply, options)
        self.decided += letter is not None
        return letter

    def yes_no(self, question: str, prediction: str) -> str | None:
        """Whether an answer means yes or no, or None (Unknown, or the judge failed).

        Args:
            question: the question text.
            prediction: the model's unreadable answer.

        Returns:
            "yes", "no", or None.
        """
        self.asked += 1
        reply = self.complete(YES_NO_TEMPLATE.format(question.rstrip("?"), prediction))
        words = reply.strip().lower().replace(".", " ").split()
        verdict = words[0] if words and words[0] in ("yes", "no") else None
        self.decided += verdict is not None
        return verdict

    def summary(self) -> dict:
        """What results.json says about the judge."""
        return {"used": True, "model": self.model, "url": self.url, "asked": self.asked,
                "decided": self.decided, "errors": len(self.errors)}
