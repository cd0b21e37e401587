"""Ring-A-Bell (Tsai et al., "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion Models?",
ICLR 2024; code chiayi-hsu/Ring-A-Bell, Get_Concept_Vector.ipynb and InversePrompt.ipynb).
docs/robustness.md "Ring-A-Bell".

Model-agnostic: only the text encoder E (the last hidden states, (L, D)) is used, never the attacked UNet,
so the adversarial prompt of a prompt is the same for every unlearned model sharing SD v1.4's text encoder.

  concept extraction (`prepare`, saved in attack_state.safetensors):
      c = mean over the pairs (w, w̄) of robustness.concept_pairs of E(w) − E(w̄)      (L, D)
  prompt discovery (`attack`, per prompt p):
      target = E(p) + η c
      x = [sot, t_1 .. t_K, eot, eot ...]  (K = `length` token ids drawn from the vocabulary less the special
          ids), fitness f(x) = ‖E(x) − target‖² summed over the (L, D) entries, smaller is better
      population: P random x
      repeat G times (`generations`):
          evaluate f, sort ascending, keep the best P // 2 (the parents)
          unless last: crossover: each parent, with probability `crossover_rate`, is cut at a random point
                         with a random parent (itself possible) and both children are added
                       mutation: each individual (parents included, in place: no elitism), with probability
                         `mutation_rate`, gets one random position set to a random id
      the adversarial prompt = the best x of the last evaluation; its ids are what the text encoder reads
      (`retokenize: true`: ctx.tokenize(its decoded text) instead, as the official released prompts are used)

Defaults are the official InversePrompt.ipynb's for nudity (population_size 200, generation 3000, mutateRate
0.25, crossoverRate 0.5, length 16, cof 3). With `prompts_csv`, no search runs: the rows of a CSV of
precomputed adversarial prompts (e.g. Ring-A-Bell's released data/InvPrompt/*.csv) are the attacked prompts.

Ours differs from the official code in:
- randomness: every draw comes from the prompt's own torch generator (the official code mixes Python's
  `random`, numpy's and torch's global RNGs), so a resumed run repeats an uninterrupted one;
- the vocabulary: ids are drawn from all ids but ctx.special_ids (<|startoftext|>, <|endoftext|>); the
  official draws from [1, 49406), which also excludes id 0 ("!", SD v2's padding token) — ours may draw it;
- fitness: evaluated in batches (`batch_size`) in float32 from the text encoder's output (the official: one
  prompt at a time, fp32 encoder); parents that were not mutated keep their fitness instead of being
  re-encoded (same values up to batch numerics, ~40% fewer encoder calls);
- children are appended after all parents (the official interleaves parent, children): only the order of
  exact ties in the sort can differ;
- the concept vector: each pair weighs the same. The official nudity vector pairs its own nudity prompts
  (Nudity_prompt.csv) with NoNudity_prompt.csv, repeats each prompt 5 times and drops 19 of the 5×N rows
  (the images NudeNet found not nude), i.e. weighs a prompt by its nude images; its notebook reads the two
  CSVs from inconsistent paths (./data/... and ../data/..., `nudity_prompt.csv` vs the repository's
  `Nudity_prompt.csv`). Our pairs (StableDiffusion/prompts/ringabell_*_pairs.csv) are our own prompts;
- the output: the official writes `tokenizer.decode(best ids)` to a CSV and the prompts are re-tokenized
  when images are generated, which is not exact (decoding drops the token boundaries, so the BPE can merge
  differently and the ids, even their count, change). Ours generates from the found ids (exact) unless
  `retokenize: true`. The official CSV writing sits inside the loop over ALL 4,703 I2P rows but outside
  the `if nudity_percentage > 50` test (the violence cell likewise outside its inner test), so every
  skipped row appends the previous prompt's result again (duplicated rows; a NameError if the first row
  is skipped) and the file is opened in append mode without a header. Ours attacks exactly the rows of
  robustness.prompts, one adversarial prompt each.
UNCONFIRMED: the paper's (K, η) per concept and model (the notebook: K 16 with η 3; its released violence
prompts: K 77 / 38 with η 5 / 5.5); tench has no official setting (ours: the nudity defaults).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Annotated, Literal

import torch
from annotated_types import Ge, Interval

from ..config import AttackConfig
from ..data.prompts import CASE_COLUMNS, read_prompt_csv
from ..errors import ConfigError, DataError
from . import register
from .base import Adversarial, Attack


def read_concept_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(with, without) prompt pairs of a concept-pairs CSV (columns `with`, `without`); one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"robustness.concept_pairs: CSV not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if not {"with", "without"} <= set(fields):
            raise DataError(f"robustness.concept_pairs {path} needs the columns `with` and `without` "
                            f"(has: {', '.join(fields) or 'none'})")
        pairs = []
        for i, rec in enumerate(reader):
            a, b = (rec.get("with") or "").strip(), (rec.get("without") or "").strip()
            if not a or not b:
                raise DataError(f"robustness.concept_pairs {path}, line {i + 2}: empty `with` or `without` prompt")
            pairs.append((a, b))
    if not pairs:
        raise DataError(f"robustness.concept_pairs {path} has no prompt pairs")
    return pairs


def read_adversarial_prompts(path: str | Path, rows) -> dict[int, str]:
    """{case number of an attacked row: its precomputed adversarial prompt} from `attack.prompts_csv`: by
    case_number when the CSV has that column (or `case`), else row i for the i-th attacked row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"attack.prompts_csv: CSV not found: {path}")
    try:
        adv_rows = read_prompt_csv(path)
    except DataError as exc:
        raise DataError(f"attack.prompts_csv: {exc}") from None
    with path.open(newline="", encoding="utf-8") as f:
        by_case = any(c in (csv.DictReader(f).fieldnames or []) for c in CASE_COLUMNS)
    if by_case:
        found = {r.case_number: r.prompt for r in adv_rows}
        missing = [r.case_number for r in rows if r.case_number not in found]
        if missing:
            raise DataError(f"attack.prompts_csv {path} has no prompt for the case numbers {missing[:5]} of "
                            f"robustness.prompts ({len(missing)} missing)")
        return {r.case_number: found[r.case_number] for r in rows}
    if len(adv_rows) < len(rows):
        raise DataError(f"attack.prompts_csv {path} has {len(adv_rows)} prompts, fewer than the {len(rows)} "
                        "prompts of robustness.prompts (row i is the i-th prompt's; or add a case_number column)")
    return {r.case_number: a.prompt for r, a in zip(rows, adv_rows)}


@register
class RingABell(Attack):
    name = "ringabell"

    class Config(AttackConfig):
        """eta: the concept vector's coefficient η (the official `cof`); length: K, the number of searched
        tokens (<= the tokenizer's context − 2: 75 for CLIP, the official "K = 77"); population: P;
        generations: G; mutation_rate, crossover_rate: per-individual probabilities; batch_size: prompts
        per text-encoder call when evaluating the fitness; retokenize: generate from tokenize(decode(ids))
        as the official released prompts are used (false: from the ids, exact); prompts_csv: CSV of
        precomputed adversarial prompts (column `prompt`, optional `case_number`): no search, no concept
        vector."""

        name: Literal["ringabell"] = "ringabell"
        eta: Annotated[float, Ge(0)] = 3.0
        length: Annotated[int, Interval(ge=1, le=75)] = 16
        population: Annotated[int, Ge(2)] = 200
        generations: Annotated[int, Ge(1)] = 3000
        mutation_rate: Annotated[float, Interval(ge=0, le=1)] = 0.25
        crossover_rate: Annotated[float, Interval(ge=0, le=1)] = 0.5
        batch_size: Annotated[int, Ge(1)] = 200
        retokenize: bool = False
        prompts_csv: str | None = None

    def __init__(self, cfg):
        super().__init__(cfg)
        self.pairs: list[tuple[str, str]] | None = None
        self.precomputed: dict[int, str] | None = None
        #: (L, D) float32 on the CPU, from `prepare` or `load_state_dict`
        self.concept_vector: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------ inputs
    def check(self, run_cfg) -> None:
        r = run_cfg.robustness
        if self.cfg.prompts_csv is not None:
            rows = read_prompt_csv(r.prompts, run_cfg.generate.seed)[: r.max_prompts]
            self.precomputed = read_adversarial_prompts(self.cfg.prompts_csv, rows)
            return
        if r.concept_pairs is None:
            raise ConfigError("attack ringabell needs robustness.concept_pairs (a CSV with columns `with`, `without`, "
                              "e.g. StableDiffusion/prompts/ringabell_nudity_pairs.csv) or attack.prompts_csv")
        self.pairs = read_concept_pairs(r.concept_pairs)

    # ------------------------------------------------------------------------------- concept vector
    @torch.no_grad()
    def embed(self, ctx, prompts: list[str]) -> torch.Tensor:
        """(N, L, D) float32 CPU text-encoder hidden states of padded prompts, `batch_size` at a time."""
        ids = torch.stack([ctx.tokenize(p) for p in prompts])
        return torch.cat([ctx.encode(ids[i: i + self.cfg.batch_size]).float().cpu()
                          for i in range(0, len(ids), self.cfg.batch_size)])

    def check_tokenizer(self, tokenizer) -> None:
        """ConfigError unless K fits the tokenizer's context (config.py bounds it by CLIP's 75 only)."""
        if self.cfg.prompts_csv is not None:
            return
        L = tokenizer.model_max_length
        if self.cfg.length > L - 2:
            raise ConfigError(f"attack.length must be <= {L - 2} (the tokenizer's {L} tokens less <|startoftext|> "
                              f"and <|endoftext|>); got {self.cfg.length}")

    def prepare(self, ctx, rows) -> None:
        if self.cfg.prompts_csv is not None:
            return  # precomputed prompts: no concept vector
        self.check_tokenizer(ctx.tokenizer)
        if self.pairs is None:
            self.check(ctx.cfg)
        with_, without = zip(*self.pairs)
        self.concept_vector = (self.embed(ctx, list(with_)) - self.embed(ctx, list(without))).mean(dim=0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.concept_vector is None else {"concept_vector": self.concept_vector}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "concept_vector" in state:
            self.concept_vector = state["concept_vector"].float()

    # ------------------------------------------------------------------------------------ search
    @torch.no_grad()
    def fitness(self, ctx, ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N,) float32 ‖E(ids) − target‖² of full prompts ids (N, L), `batch_size` prompts per encoder call."""
        out = []
        for i in range(0, len(ids), self.cfg.batch_size):
            hidden = ctx.encode(ids[i: i + self.cfg.batch_size]).float()
            out.append(((hidden - target) ** 2).sum(dim=(1, 2)).cpu())
        return torch.cat(out)

    def prompts_of(self, ctx, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) ids [sot, tokens, eot, padding] of token bodies (N, K) (ctx.assemble's layout, K <= L − 2)."""
        ids = ctx.assemble([0] * tokens.shape[1]).repeat(len(tokens), 1)
        ids[:, 1: 1 + tokens.shape[1]] = tokens
        return ids

    def vocabulary(self, ctx) -> torch.Tensor:
        """The ids the search may place: the vocabulary (tokenizer ∩ embedding table) less ctx.special_ids."""
        V = min(len(ctx.tokenizer), ctx.token_table.shape[0])
        allowed = torch.ones(V, dtype=torch.bool)
        allowed[[i for i in ctx.special_ids if i < V]] = False
        return allowed.nonzero().view(-1)

    def search(self, ctx, target: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, list[float]]:
        """The genetic search (module docstring): (best token body (K,), best fitness of every generation)."""
        c = self.cfg
        K, keep = c.length, c.population // 2
        vocab = self.vocabulary(ctx)

        def draw(*shape):
            return vocab[torch.randint(len(vocab), shape, generator=generator)]

        pop = draw(c.population, K)
        fit = self.fitness(ctx, self.prompts_of(ctx, pop), target)
        history = []
        for step in range(c.generations):
            order = torch.sort(fit, stable=True).indices[:keep]
            pop, fit = pop[order], fit[order]
            history.append(float(fit[0]))
            if step == c.generations - 1:
                break
            # crossover: parent i with a random parent j at a random cut of the body (official: cut point in
            # [1, K] of the full ids, i.e. [0, K) of the body), both children added
            n = len(pop)
            crossed = (torch.rand(n, generator=generator) < c.crossover_rate).nonzero().view(-1)
            partner = torch.randint(n, (len(crossed),), generator=generator)
            cut = torch.randint(K, (len(crossed),), generator=generator)
            head = torch.arange(K)[None] < cut[:, None]
            a, b = pop[crossed], pop[partner]
            pop = torch.cat([pop, torch.where(head, a, b), torch.where(head, b, a)])
            known = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(2 * len(crossed), dtype=torch.bool)])
            # mutation: one random position of each chosen individual (parents too) set to a random id
            mutated = (torch.rand(len(pop), generator=generator) < c.mutation_rate).nonzero().view(-1)
            where = torch.randint(K, (len(mutated),), generator=generator)
            pop[mutated, where] = draw(len(mutated))
            known[mutated] = False
            fresh = (~known).nonzero().view(-1)
            fit = torch.cat([fit, torch.empty(len(pop) - n)])
            if len(fresh):
                fit[fresh] = self.fitness(ctx, self.prompts_of(ctx, pop[fresh]), target)
        return pop[0], history

    def attack(self, ctx, row, oracle, generator) -> Adversarial:
        c = self.cfg
        start = time.perf_counter()
        if c.prompts_csv is not None:
            if self.precomputed is None:
                self.check(ctx.cfg)
            text = self.precomputed[row.case_number]
            return Adversarial(ctx.tokenize(text), text, info={"prompts_csv": str(c.prompts_csv), "searched": False})
        self.check_tokenizer(ctx.tokenizer)
        if self.concept_vector is None:
            raise RuntimeError("ringabell: no concept vector (prepare or load_state_dict first)")
        with torch.no_grad():
            base = ctx.encode(ctx.tokenize(row.prompt))[0].float()
        if tuple(self.concept_vector.shape) != tuple(base.shape):
            raise ConfigError(f"the saved concept vector {tuple(self.concept_vector.shape)} does not fit this text "
                              f"encoder's {tuple(base.shape)}")
        target = base + c.eta * self.concept_vector.to(base.device)
        body, history = self.search(ctx, target, generator)
        ids = ctx.assemble(body.tolist())
        text = ctx.decode(ids)
        info = {"searched": True, "generations": len(history), "fitness_first": round(history[0], 6),
                "fitness_last": round(history[-1], 6), "fitness_best": round(min(history), 6),
                "fitness_trace": [round(history[i], 6) for i in range(0, len(history), max(len(history) // 10, 1))],
                "adversarial_tokens": body.tolist()}
        if c.retokenize:
            ids = ctx.tokenize(text)
            info.update(retokenized=True, retokenized_changed=ctx.prompt_tokens(ids) != body.tolist(),
                        fitness_retokenized=round(float(self.fitness(ctx, ids[None], target)[0]), 6))
        info["seconds"] = round(time.perf_counter() - start, 3)
        return Adversarial(ids, text, info=info)
