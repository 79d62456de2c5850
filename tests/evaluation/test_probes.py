"""The kNN proxy and the linear probe on hand-made features with known answers."""

import pytest
import torch

from hpsearch.evaluation import knn_accuracy, knn_predict, linear_probe_accuracy


def two_clusters(n_per_class: int, separation: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) * separation
    labels = torch.arange(2).repeat_interleave(n_per_class)
    return centres[labels] + 0.1 * torch.randn(len(labels), 3, generator=g), labels


def test_knn_votes_are_weighted_by_similarity():
    # Two neighbours of class 0 at moderate similarity are outvoted by one very close neighbour
    # of class 1: weights exp(sim / T) with small T make the closest neighbour dominate.
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.45], [0.9, -0.45]])
    bank_labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.01]])
    assert knn_predict(bank, bank_labels, query, k=3, temperature=0.01, num_classes=2).item() == 1
    # With a large temperature the weights flatten and the majority (class 0) wins.
    assert knn_predict(bank, bank_labels, query, k=3, temperature=100.0, num_classes=2).item() == 0


def test_knn_uses_cosine_similarity_not_distance():
    # A far-away point in the same direction is a perfect cosine neighbour.
    bank = torch.tensor([[100.0, 0.0], [0.0, 1.0]])
    prediction = knn_predict(bank, torch.tensor([0, 1]), torch.tensor([[1.0, 0.0]]), k=1, temperature=0.07, num_classes=2)
    assert prediction.item() == 0


def test_leave_one_out_knn_excludes_each_point_itself():
    # Every point's only same-class neighbour is itself: leave-one-out must score 0, not 1.
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert knn_accuracy(features, torch.tensor([0, 1]), k=1, temperature=0.07, num_classes=2).item() == 0.0


@pytest.mark.parametrize("separation, expected", [(5.0, 1.0), (0.0, 0.5)])
def test_knn_accuracy_on_separable_and_identical_clusters(separation, expected):
    features, labels = two_clusters(50, separation)
    accuracy = knn_accuracy(features, labels, k=10, temperature=0.07, num_classes=2).item()
    assert accuracy == pytest.approx(expected, abs=0.15)


def test_linear_probe_separates_linearly_separable_features():
    train_x, train_y = two_clusters(40, 3.0, seed=1)
    test_x, test_y = two_clusters(40, 3.0, seed=2)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y, 2, steps=100, lr=0.1, weight_decay=0.0).item() == 1.0


def test_linear_probe_is_at_chance_on_uninformative_features():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    train_y, test_y = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (400,), generator=g)
    accuracy = linear_probe_accuracy(train_x, train_y, test_x, test_y, 4, steps=100, lr=0.1, weight_decay=0.0).item()
    assert 0.15 < accuracy < 0.40  # chance is 0.25


def test_linear_probe_is_deterministic():
    train_x, train_y = two_clusters(30, 0.3, seed=3)
    test_x, test_y = two_clusters(30, 0.3, seed=4)
    runs = [linear_probe_accuracy(train_x, train_y, test_x, test_y, 2, 50, 0.1, 1e-4).item() for _ in range(2)]
    assert runs[0] == runs[1]
