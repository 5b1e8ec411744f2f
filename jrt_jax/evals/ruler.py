"""RULER's synthetic long-context tasks (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?"), built offline in tokens.

Four tasks that need no downloaded data, with RULER's prompt templates (its "base" template: no chat wrapper):

* ``niah`` (niah_single_1) — a haystack of one noise paragraph ("The grass is green. …") repeated line after line,
  one needle "One of the special magic numbers for KEY is: VALUE." at a random depth (KEY an adjective-noun word,
  VALUE a 7-digit number); right when VALUE is in the output.
* ``vt`` (variable tracking) — one chain of 4 hops, "VAR ABCDE = 12345", "VAR FGHIJ = VAR ABCDE", …, its five lines
  in order at random places of the noise haystack; the answer is every variable holding the value.
* ``cwe`` (common words extraction) — a numbered list of words in which 10 words appear often (30 times each,
  6 below 4,096 tokens) and the others rarely (3 times, 1 below 4,096); the answer is the 10 frequent ones.
* ``fwe`` (frequent words extraction) — coded 6-letter words with Zipf counts (count of rank k ∝ k^-2); the top
  rank is the noise word "..." which the prompt says to ignore, and the answer is ranks 2–4.

Every prompt has exactly `length` tokens: the fixed parts (instruction, question, answer prefix) are kept and the
haystack is cut or filled to fit (niah / vt: noise lines, the last one cut; cwe: one more rare word, its last
entry cut; fwe: the ignored noise word). RULER counts the generated tokens in the length as well; here,
as in the passkey test, the length is the prompt's, so the plots of both tests share their x axis.

Score (RULER's "string_match_all"): the fraction of the expected strings found in the generated text, ignoring
case — 0 or 1 for niah, fifths for vt, tenths for cwe, thirds for fwe. RULER prepends one worked example to the vt
and cwe prompts; these prompts do not (their answer prefixes alone set the answer's form), so scores read as
RULER-style rather than as RULER's published numbers.

Words come from lists typed into this module (no downloads): cwe draws from a few hundred English words, or from
syllable pseudo-words once a prompt needs more words than the list holds; fwe's coded words are random letters.
Everything is drawn from one `np.random.Generator`, so a seed gives the same prompts on every machine.
"""

from __future__ import annotations

import dataclasses
import itertools
import string
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from jrt_jax.evals.plotting import pyplot

TASKS = ("niah", "vt", "cwe", "fwe")

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

#: Tokens generated per task (RULER's budgets).
MAX_NEW_TOKENS = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50}

NIAH_HEAD = ("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you "
             "about the number afterwards.")
NIAH_NEEDLE = "One of the special magic numbers for {key} is: {value}."
NIAH_TAIL = ("\nWhat is the special magic number for {key} mentioned in the provided text? The special magic number "
             "for {key} mentioned in the provided text is")

VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
VT_TAIL = ("\nQuestion: Find all variables that are assigned the value {value} in the text above. Answer: According "
           "to the chain(s) of variable assignment in the text above, {count} variables are assigned the value "
           "{value}, they are:")
VT_HOPS = 4

CWE_HEAD = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
            "that appear most often.\n")
CWE_TAIL = ("\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that appear "
            "most often in the list are:")
CWE_COMMON = 10

FWE_HEAD = ("Read the following coded text and track the frequency of each coded word. Find the three most frequently "
            "appeared coded words.")
FWE_TAIL = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
            "frequently appeared words in the above coded text? Answer: According to the coded text above, the three "
            "most frequently appeared words are:")
FWE_NOISE = "..."
FWE_ALPHA = 2.0
FWE_WORD_LETTERS = 6

ADJECTIVES = """
active afraid alert ancient angry anxious aware bitter bold brave brief bright broad broken busy calm careful
certain cheap clean clever close common cool crazy cruel curious dark dead deep dirty distant divine dizzy double
eager early easy elder empty equal exact famous fancy fierce final flat fresh friendly full funny gentle giant glad
golden grand great green happy heavy hidden high hollow honest huge humble hungry ideal jolly keen kind large lazy
little lively local lonely lucky mad major mellow mighty minor modern narrow nasty neat nervous noble noisy normal
odd orange pale perfect polite poor proud pure purple quick quiet rapid rare ready rich rigid rough round royal rude
sacred safe salty scarce secret sharp shiny short shy silent silly simple sleepy slow small smart smooth soft solid
sour spare steady steep sticky stiff strange strict strong sudden sunny super sweet swift tall tame tender thick
thin tidy tiny tired tough true ugly upper urban vast vivid warm weak wealthy weird whole wide wild wise witty young
"""

NOUNS = """
acorn airport album anchor angle animal ankle apple artist autumn badge bakery balloon bamboo banana banner barrel
basket beach beard bell bench berry bicycle blanket bottle bracelet branch bread brick bridge bucket butter button
cabin cable camera camel candle canoe canvas captain carpet castle cattle ceiling cellar chair cherry chimney circle
clock cloud coast coffee collar comet copper corner cotton county cradle crayon cricket crown curtain cushion dancer
desert diamond doctor dolphin donkey dragon drawer dream eagle engine envelope falcon feather fence finger flame
flower forest fountain garden garlic ginger glacier glove goose guitar hammer harbor helmet hill honey horizon horse
island jacket jelly jewel jungle kettle kitchen ladder lantern lemon letter library lizard magnet mango marble
market meadow mirror monkey motor mountain needle nephew ocean office orchard oven paddle palace panther parrot
peach pencil pepper piano pillow pirate planet pocket potato puppet pyramid quilt rabbit radio ribbon river rocket
saddle sailor salad scarf school shadow shelf shovel silver singer sister sofa spider spoon squirrel stable statue
stone summer tablet teacher temple thunder tiger timber tomato tower tractor train tunnel turtle umbrella valley
velvet village violin wagon wallet window winter wizard wolf yard zebra
"""

VERBS = """
accept adjust admire advise allow amuse answer appear arrange arrive assist attach attend balance bathe behave
belong blink borrow bounce breathe brush build bury calculate carry chase cheer chew collect compare complain
confess connect consider correct cough crawl decide deliver depend describe deserve destroy divide drain dress drift
drink educate embrace employ enjoy escape examine explain explore fasten fetch file fill float flood fold follow
forgive gather glow grab greet grin guard guess guide handle hang harvest hatch hover hunt imagine improve include
inform inject invent invite juggle jump kneel knit knock laugh launch learn lend lift listen manage march marry
match measure melt mend mix notice obey offer order pack paint pause peel perform plant polish pour prefer prepare
press pretend print promise protect pull punch punish push question reach realise receive reflect refuse relax
remain remember remind repair repeat reply report rescue retire return rinse roll scatter scold scream search settle
shiver sigh signal skate sketch ski slip smash smile sneeze snore spark spray sprout squash squeeze stamp stare
steer stir stitch stretch suggest supply suppose surprise swim switch tease tempt thank tickle travel tremble trust
twist type unite unlock vanish visit wander warn wash watch wave whisper whistle wink wobble wonder worry wrap yawn
yell zoom
"""


def _words(block: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(block.split()))


ADJECTIVE_LIST = _words(ADJECTIVES)
NOUN_LIST = _words(NOUNS)
#: The English words cwe draws from (every word of the three lists once).
WORD_LIST = _words(ADJECTIVES + NOUNS + VERBS)

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def parse_tasks(text: str) -> list[str]:
    """`--tasks` ("niah,vt", in any order; repeats dropped) → task names; an unknown name is a ValueError."""
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    if not names:
        raise ValueError(f"--tasks must name at least one of {', '.join(TASKS)}; got {text!r}")
    for name in names:
        if name not in TASKS:
            raise ValueError(f"--tasks: unknown task {name!r}; choose from {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def score(generated: str, answers: Sequence[str]) -> float:
    """The fraction of `answers` that occur in `generated`, ignoring case (RULER's string_match_all)."""
    if not answers:
        raise ValueError("answers must name at least one expected string; got none")
    text = generated.lower()
    return sum(str(a).lower() in text for a in answers) / len(answers)


def _too_short(task: str, length: int, minimum: int) -> ValueError:
    return ValueError(f"{task}: length {length} is too short for its fixed parts; the shortest {task} prompt has "
                      f"{minimum} tokens")


def _haystack(tokenizer, task: str, length: int, head: list[int], lines: list[list[int]], tail: list[int],
              slots: Callable[[int], list[int]]) -> list[int]:
    """head + noise lines with `lines` inserted + tail, exactly `length` tokens: the noise is one line per
    `NOISE` paragraph, the last one cut. `slots(full)` gives, for each inserted line, how many whole noise lines
    precede it (non-decreasing, at most `full`)."""
    unit = tokenizer.encode("\n" + NOISE)
    fixed = len(head) + sum(map(len, lines)) + len(tail)
    room = length - fixed
    if room < len(unit):
        raise _too_short(task, length, fixed + len(unit))
    noise = (unit * (room // len(unit) + 1))[:room]
    full = room // len(unit)
    out, start = list(head), 0
    for line, slot in zip(lines, slots(full)):
        end = slot * len(unit)
        out += noise[start:end] + line
        start = end
    return out + noise[start:] + tail


def niah_prompt(tokenizer, length: int, rng: np.random.Generator, *,
                depth: float | None = None) -> tuple[list[int], list[str]]:
    """(ids, [value]): a needle-in-a-haystack prompt of exactly `length` tokens (niah_single_1).

    The needle line sits between whole noise lines, after round(depth × their number) of them; `depth` ∈ [0, 1]
    is drawn from `rng` when None."""
    key = f"{ADJECTIVE_LIST[rng.integers(len(ADJECTIVE_LIST))]}-{NOUN_LIST[rng.integers(len(NOUN_LIST))]}"
    value = str(int(rng.integers(10**6, 10**7)))
    if depth is None:
        depth = float(rng.random())
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1]; got {depth}")
    head = tokenizer.encode(NIAH_HEAD)
    needle = tokenizer.encode("\n" + NIAH_NEEDLE.format(key=key, value=value))
    tail = tokenizer.encode(NIAH_TAIL.format(key=key))
    ids = _haystack(tokenizer, "niah", length, head, [needle], tail, lambda full: [round(depth * full)])
    return ids, [value]


def _variable_names(rng: np.random.Generator, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(list(string.ascii_uppercase), 5))
        if name not in names:
            names.append(name)
    return names


def vt_prompt(tokenizer, length: int, rng: np.random.Generator, *,
              hops: int = VT_HOPS) -> tuple[list[int], list[str]]:
    """(ids, names): a variable-tracking prompt of exactly `length` tokens, one chain of `hops` hops.

    The chain's lines ("VAR A = 12345", "VAR B = VAR A", …) appear in assignment order, each between whole noise
    lines at random places; the answer is all `hops` + 1 names."""
    if isinstance(hops, bool) or not isinstance(hops, int) or hops < 1:
        raise ValueError(f"hops must be an int >= 1; got {hops!r}")
    names = _variable_names(rng, hops + 1)
    value = str(int(rng.integers(10000, 100000)))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in itertools.pairwise(names)]
    head = tokenizer.encode(VT_HEAD)
    lines = [tokenizer.encode("\n" + line) for line in chain]
    tail = tokenizer.encode(VT_TAIL.format(value=value, count=len(names)))

    def slots(full: int) -> list[int]:
        return sorted(int(s) for s in rng.integers(0, full + 1, len(lines)))

    return _haystack(tokenizer, "vt", length, head, lines, tail, slots), names


def _pseudo_words(rng: np.random.Generator) -> Iterator[str]:
    """Endless distinct pronounceable pseudo-words of two or three consonant-vowel syllables (+ a consonant)."""
    seen: set[str] = set()
    while True:
        syllables = int(rng.integers(2, 4))
        word = "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(syllables))
        word += rng.choice(list(_CONSONANTS))
        if word not in seen:
            seen.add(word)
            yield word


def _entry(tokenizer, i: int, word: str) -> list[int]:
    """Tokens of list entry `i` ("1. word", then " 2. word", …), number and word encoded apart so that an entry's
    size does not depend on its neighbours."""
    return tokenizer.encode(f"{i}." if i == 1 else f" {i}.") + tokenizer.encode(" " + word)


def _cwe_fit(tokenizer, words: Iterator[str], room: int, common_repeats: int, rare_repeats: int):
    """(common, rare, tokens used, spare) for the longest list that fits `room` — `spare` is the first word that did
    not fit — or None when `words` runs out first. `used` > `room` when the common words alone do not fit."""
    sizes: dict[int, int] = {}

    def number(i: int) -> int:
        if i not in sizes:
            sizes[i] = len(tokenizer.encode(f"{i}." if i == 1 else f" {i}."))
        return sizes[i]

    def cost(word: str, repeats: int, entries: int) -> int:
        return repeats * len(tokenizer.encode(" " + word)) + sum(number(entries + j + 1) for j in range(repeats))

    common = [w for _, w in zip(range(CWE_COMMON), words)]
    if len(common) < CWE_COMMON:
        return None
    used, entries = 0, 0
    for word in common:
        used += cost(word, common_repeats, entries)
        entries += common_repeats
    rare: list[str] = []
    while used <= room:
        word = next(words, None)
        if word is None:
            return None
        extra = cost(word, rare_repeats, entries)
        if used + extra > room:
            return common, rare, used, word
        rare.append(word)
        used += extra
        entries += rare_repeats
    return common, rare, used, None


def cwe_prompt(tokenizer, length: int, rng: np.random.Generator) -> tuple[list[int], list[str]]:
    """(ids, the 10 common words): a common-words-extraction prompt of exactly `length` tokens.

    The list holds the common words 30 times each and as many rare words 3 times each as fit (6 and 1 below 4,096
    tokens, as in RULER), shuffled; the room left takes one more rare word, at most as often as the others, its
    last entry cut."""
    common_repeats, rare_repeats = (30, 3) if length >= 4096 else (6, 1)
    head = tokenizer.encode(CWE_HEAD)
    tail = tokenizer.encode(CWE_TAIL)
    room = length - len(head) - len(tail)
    state = rng.bit_generator.state
    english = list(WORD_LIST)
    rng.shuffle(english)
    fitted = _cwe_fit(tokenizer, iter(english), room, common_repeats, rare_repeats)
    if fitted is None:  # more words than the English list holds: pseudo-words throughout, not a mix
        rng.bit_generator.state = state
        fitted = _cwe_fit(tokenizer, _pseudo_words(rng), room, common_repeats, rare_repeats)
    common, rare, used, spare = fitted
    if used > room:
        raise _too_short("cwe", length, length - room + used)
    entries = common * common_repeats + rare * rare_repeats
    ids = list(head)
    for i, k in enumerate(rng.permutation(len(entries)), start=1):
        ids += _entry(tokenizer, i, entries[k])
    for i in range(len(entries) + 1, len(entries) + 1 + rare_repeats):  # `spare` did not fit this often
        if len(ids) >= len(head) + room:
            break
        ids += _entry(tokenizer, i, spare)
    return ids[: len(head) + room] + tail, common


def _zipf_counts(words: int, vocab: int, alpha: float = FWE_ALPHA) -> np.ndarray:
    """Count of each rank 1..vocab among `words` draws: floor(words · k^-alpha / ζ(alpha)), as RULER."""
    k = np.arange(1, vocab + 1, dtype=np.float64)
    zeta = float(np.sum(np.arange(1, 100_000, dtype=np.float64) ** -alpha)) + 100_000 ** (1 - alpha) / (alpha - 1)
    return np.floor(words * k**-alpha / zeta).astype(np.int64)


def fwe_prompt(tokenizer, length: int, rng: np.random.Generator) -> tuple[list[int], list[str]]:
    """(ids, the 3 most frequent coded words): a frequent-words-extraction prompt of exactly `length` tokens.

    A vocabulary of max(10, length // 50) random 6-letter words with Zipf counts (alpha 2); rank 1 is the noise word
    "...", ranks 2–4 are the answer. The text holds as many words as fit, shuffled; the rest of the room is noise
    words, the last one cut."""
    vocab = max(10, length // 50)
    coded: list[str] = []
    while len(coded) < vocab - 1:
        word = "".join(rng.choice(list(string.ascii_lowercase), FWE_WORD_LETTERS))
        if word not in coded:
            coded.append(word)
    ranked = [FWE_NOISE] + coded
    sizes = np.array([len(tokenizer.encode(" " + w)) for w in ranked])
    head = tokenizer.encode(FWE_HEAD)
    tail = tokenizer.encode(FWE_TAIL)
    room = length - len(head) - len(tail)

    def tokens(n: int) -> int:
        return int(_zipf_counts(n, vocab) @ sizes)

    def clear(n: int) -> bool:  # the answer is the only top three: rank 4 strictly above rank 5
        counts = _zipf_counts(n, vocab)
        return bool(counts[3] > counts[4])

    lo, hi = 0, 2 * max(room, 0) + 16  # tokens(n) >= 0.6 n - 1 > room beyond hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if tokens(mid) <= room else (lo, mid - 1)
    while lo > 0 and not clear(lo):
        lo -= 1
    if lo == 0:
        smallest = next(n for n in range(1, 10**6) if clear(n))
        raise _too_short("fwe", length, length - room + tokens(smallest))
    counts = _zipf_counts(lo, vocab)
    text = [w for w, c in zip(ranked, counts) for _ in range(int(c))]
    ids = list(head)
    for k in rng.permutation(len(text)):
        ids += tokenizer.encode(" " + text[k])
    noise = tokenizer.encode(" " + FWE_NOISE)
    gap = len(head) + room - len(ids)
    ids += (noise * (gap // len(noise) + 1))[:gap]
    return ids + tail, coded[:3]


PROMPTS = {"niah": niah_prompt, "vt": vt_prompt, "cwe": cwe_prompt, "fwe": fwe_prompt}


def prompt(task: str, tokenizer, length: int, rng: np.random.Generator) -> tuple[list[int], list[str]]:
    """(ids, answers) of one `task` prompt of exactly `length` tokens."""
    if task not in PROMPTS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int; got {length!r}")
    return PROMPTS[task](tokenizer, length, rng)


def task_rng(seed: int, task: str, length: int) -> np.random.Generator:
    """The random stream of one (task, length): the same prompts whichever other tasks and lengths run."""
    return np.random.default_rng([seed, TASKS.index(task), length])


@dataclasses.dataclass
class RulerResult:
    tasks: list[str]
    lengths: list[int]
    accuracy: dict[str, list[float]]  # task -> mean score per length
    mean: list[float]  # per length, the mean over tasks
    trials: int
    seed: int
    rows: list[dict]  # per trial: task, length, prompt tokens, answers, generated text, finish, score

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


Prompts = dict[tuple[str, int], list[tuple[list[int], list[str]]]]


def build_prompts(tokenizer, lengths: Sequence[int], *, tasks: Sequence[str] = TASKS, trials: int = 5,
                  seed: int = 0) -> Prompts:
    """(task, length) -> `trials` (ids, answers) pairs, each (task, length) from its own `task_rng` stream.

    Built before any generation, so that a length too short for a task is refused before minutes of decoding."""
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be positive ints; got {list(lengths)}")
    tasks = list(tasks)
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"tasks must be a non-empty list of {', '.join(TASKS)}; got {tasks}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive int; got {trials!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")
    built: Prompts = {}
    for task in tasks:
        for length in lengths:
            rng = task_rng(seed, task, length)
            built[task, length] = [prompt(task, tokenizer, length, rng) for _ in range(trials)]
    return built


def ruler(model, tokenizer, lengths: Sequence[int], *, tasks: Sequence[str] = TASKS, trials: int = 5,
          seed: int = 0, max_new_tokens: int | None = None, progress: Callable[[int], None] | None = None,
          prompts: Prompts | None = None) -> RulerResult:
    """Mean score of each task at each prompt length over `trials` random prompts, greedy decoding.

    `max_new_tokens`: tokens generated per prompt (default: RULER's budget per task, `MAX_NEW_TOKENS`);
    generation also stops at the tokenizer's end-of-sequence token. `prompts`: what `build_prompts` returned for
    the same tokenizer, lengths, tasks, trials and seed (built here when None)."""
    from jrt_jax.generate import Generator

    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be a positive int or None; got {max_new_tokens!r}")
    tasks = list(tasks)
    built = build_prompts(tokenizer, lengths, tasks=tasks, trials=trials, seed=seed) if prompts is None else prompts
    if set(built) != {(t, n) for t in tasks for n in lengths} or any(len(v) != trials for v in built.values()):
        raise ValueError("prompts must be build_prompts' result for the same lengths, tasks and trials")
    eos = getattr(tokenizer, "eos_id", None)
    gen = Generator(model)
    rows, accuracy = [], {task: [] for task in tasks}
    for task in tasks:
        budget = max_new_tokens or MAX_NEW_TOKENS[task]
        for length in lengths:
            total = 0.0
            for ids, answers in built[task, length]:
                out = gen.generate([ids], max_new_tokens=budget, detokenize=tokenizer.decode,
                                   stop_tokens=() if eos is None else (eos,))
                text = out.texts[0] if out.texts else tokenizer.decode(list(out.tokens[0]))
                got = score(text, answers)
                total += got
                rows.append({"task": task, "length": length, "prompt_tokens": len(ids), "answers": answers,
                             "generated": text, "finish": out.finish_reasons[0], "score": got})
                if progress is not None:
                    progress(1)
            accuracy[task].append(total / trials)
    mean = [float(np.mean([accuracy[t][i] for t in tasks])) for i in range(len(lengths))]
    return RulerResult(tasks, list(lengths), accuracy, mean, trials, seed, rows)


def plot(result: RulerResult, path, title: str = "") -> None:
    """Score vs prompt length (log2 axis) as a PNG: one line per task, the mean over tasks dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for task in result.tasks:
        ax.plot(result.lengths, result.accuracy[task], marker="o", label=task)
    if len(result.tasks) > 1:
        ax.plot(result.lengths, result.mean, color="black", linestyle="--", marker="x", label="mean")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel(f"RULER score ({result.trials} trials)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["MAX_NEW_TOKENS", "NOISE", "TASKS", "Prompts", "RulerResult", "build_prompts", "cwe_prompt",
           "fwe_prompt", "niah_prompt", "parse_tasks", "plot", "prompt", "ruler", "score", "task_rng", "vt_prompt"]
