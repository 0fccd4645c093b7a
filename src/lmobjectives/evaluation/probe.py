"""A linear probe: which held-out document does a sentence come from, read off the model's hidden states?

The task, built from the corpus: the classes are the held-out documents with at least ``min_sentences``
sentences (in the built-in corpus a document is one section of one reference-manual topic, e.g. the
"assert" statement); each sentence is one example, the sentences of a class alternating between the
probe's training and test halves. Features: each sentence alone as one input row (truncated to
``seq_len``), read as the model reads text (causal, bidirectional, or by the encoder of an
encoder-decoder), its final hidden states mean-pooled over the tokens. The probe: multinomial logistic
regression in torch on the standardised features (accelerated gradient descent, L2 ``weight_decay``), fit on the training half,
accuracy on the test half, next to two references: the majority class's share of the test half, and the
same probe on mean-pooled input embeddings (the bag of tokens, which the layers above should beat).
"""

from __future__ import annotations

import torch

from ..data.packing import sentence_table, tokenize_corpus
from .result import TaskResult, plain_batch
from .run import NotApplicable, Run, _texts_as_documents

__all__ = ["fit_linear_probe", "probe", "sentence_features"]


@torch.no_grad()
def sentence_features(
    run: Run, sentences: torch.Tensor, lengths: torch.Tensor, *, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden, embedded)`` ``(S, d)`` each: the mean over the real tokens of sentences ``(S, L)`` of the final
    hidden states (an encoder-decoder: of the encoder) and of the input embeddings (the tied output matrix)."""
    real = torch.arange(sentences.shape[1])[None] < lengths[:, None]  # (S, L)
    hidden, embedded = [], []
    weight = run.model.output_weight.detach().cpu()
    for first in range(0, sentences.shape[0], batch_size):
        x, m = sentences[first : first + batch_size], real[first : first + batch_size]
        batch = plain_batch(x, m, causal=run.reads == "causal").to(run.device)
        h = run.model.encode(batch) if run.reads == "encoder_decoder" else run.model(batch).hidden  # (b, L, d)
        w = m[:, :, None].float()
        hidden.append((h.cpu().float() * w).sum(1) / w.sum(1))
        embedded.append((weight[x] * w).sum(1) / w.sum(1))
    return torch.cat(hidden), torch.cat(embedded)


def fit_linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, *, weight_decay: float = 1e-3, steps: int = 500
) -> torch.Tensor:
    """Predicted classes of ``test_x`` ``(M, d)`` by a multinomial logistic regression fit on ``train_x`` ``(N, d)``,
    ``train_y`` ``(N,)``: features standardised with the training mean and std, loss = mean cross-entropy +
    ``weight_decay * |W|^2``, minimised by Nesterov's accelerated gradient descent with the step ``1 / L`` (``L``
    bounds the loss's curvature), ``steps`` steps from zero (deterministic; no ``torch.optim``, whose first use
    imports the compiler, seconds on a small machine).

    >>> x = torch.tensor([[0.0], [0.1], [1.0], [1.1]]); y = torch.tensor([0, 0, 1, 1])
    >>> fit_linear_probe(x, y, torch.tensor([[0.05], [1.05]])).tolist()
    [0, 1]
    """
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False).clamp(min=1e-6)
    ones = torch.ones(train_x.shape[0], 1, dtype=torch.float64)
    a = torch.cat([((train_x - mean) / std).double(), ones], 1)  # (N, d + 1): the last column is the bias
    b = torch.cat([((test_x - mean) / std).double(), torch.ones(test_x.shape[0], 1, dtype=torch.float64)], 1)
    n, classes = a.shape[0], int(train_y.max()) + 1
    targets = torch.nn.functional.one_hot(train_y, classes).double()  # (N, C)
    decay = torch.full((a.shape[1], 1), 2 * weight_decay, dtype=torch.float64)
    decay[-1] = 0  # no decay on the bias
    step = 1 / (0.5 * float(torch.linalg.matrix_norm(a, 2)) ** 2 / n + 2 * weight_decay)
    w = z = torch.zeros(a.shape[1], classes, dtype=torch.float64)
    for k in range(steps):
        grad = a.T @ (torch.softmax(a @ z, -1) - targets) / n + decay * z  # (d + 1, C)
        w_next = z - step * grad
        z = w_next + k / (k + 3) * (w_next - w)
        w = w_next
    return (b @ w).argmax(-1)


def probe(run: Run, *, min_sentences: int = 6, weight_decay: float = 1e-3) -> TaskResult:
    """Probe accuracy on held-out documents (see the module docstring)."""
    run.require_heldout()
    documents = [d for d in _texts_as_documents(run.heldout) if len(d) >= min_sentences]
    if len(documents) < 2:
        raise NotApplicable(
            f"the probe needs 2 held-out documents with >= {min_sentences} sentences, {run.out_dir} has "
            f"{len(documents)} (hold out more with --heldout, or lower min_sentences)"
        )
    vocab = run.vocab
    table = sentence_table(
        tokenize_corpus(documents, run.tokenizer), pad_id=vocab.pad_id, max_length=run.config.seq_len
    )
    labels = table.document_ids  # (S,) 0..C-1
    hidden, embedded = sentence_features(run, table.input_ids, table.lengths)
    rank = torch.zeros_like(labels)  # position of each sentence within its class
    for c in labels.unique().tolist():
        here = labels == c
        rank[here] = torch.arange(int(here.sum()))
    train, test = rank % 2 == 0, rank % 2 == 1
    accuracy = float(
        (fit_linear_probe(hidden[train], labels[train], hidden[test], weight_decay=weight_decay) == labels[test])
        .float()
        .mean()
    )
    bag = float(
        (fit_linear_probe(embedded[train], labels[train], embedded[test], weight_decay=weight_decay) == labels[test])
        .float()
        .mean()
    )
    majority = float(torch.bincount(labels[test]).max()) / int(test.sum())
    return TaskResult(
        "probe",
        metrics={"accuracy": accuracy, "embedding_accuracy": bag, "majority_accuracy": majority},
        info={
            "procedure": f"a linear classifier on frozen features, {len(documents)} classes, {int(train.sum())} "
            f"training and {int(test.sum())} test sentences",
            "classes": len(documents),
            "train_sentences": int(train.sum()),
            "test_sentences": int(test.sum()),
            "features": "mean-pooled final hidden states"
            + (" of the encoder" if run.reads == "encoder_decoder" else ""),
            "chance_accuracy": 1 / len(documents),
        },
    )
