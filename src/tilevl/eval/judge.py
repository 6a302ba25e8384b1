"""An optional LLM judge, reached through any OpenAI-compatible `/chat/completions` endpoint,
that maps the answers rule-based extraction cannot read onto an option letter or yes/no.

Off unless `--judge-url` is given; uses only the standard library (urllib), temperature 0.
"""

from __future__ import annotations

import json
import random
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
# VLMEvalKit asks its choice judge this many times before it guesses
# (`extract_answer_from_item`, `retry = 3`).
CHOICE_ATTEMPTS = 3
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
        self.guessed = 0
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

    def choose(self, question: str, options: dict[str, str], prediction: str) -> str:
        """Which option an answer means, as VLMEvalKit's `extract_answer_from_item` decides.

        The judge is asked up to three times until its reply reads (by the same rule-based
        `extract_choice`) as a letter or "Z" (none of the options). When no reply reads,
        upstream draws at random among the letters and "Z"; we draw from a generator
        seeded with the question and answer, so a rerun gives the same pick, and count the
        draw in `guessed`. An endpoint that fails outright is not asked again.

        Args:
            question: the question text.
            options: letter → option text.
            prediction: the model's unreadable answer.

        Returns:
            An option letter or "Z".
        """
        listed = " ".join(f"{k}. {v}" for k, v in options.items())
        prompt = CHOICE_TEMPLATE.format(question.rstrip("?"), listed, prediction)
        self.asked += 1
        for _ in range(CHOICE_ATTEMPTS):
            failures = len(self.errors)
            letter = extract_choice(self.complete(prompt), options)
            if letter is not None:
                self.decided += 1
                return letter
            if len(self.errors) > failures:
                break
        self.guessed += 1
        pool = [str(k) for k in options] + ([] if "Z" in options else ["Z"])
        return random.Random(f"judge:{question}:{prediction}").choice(pool)

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
                "decided": self.decided, "guessed": self.guessed, "errors": len(self.errors)}
