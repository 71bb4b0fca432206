"""A user-style classifier for benchmarks/byo_model.py: inverted residuals with squeeze-excite and a
concatenation branch, written as a user would, outside edgecompress (brought in as `module`)."""
import torch
from torch import nn


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, max(c // 4, 4), 1), nn.Conv2d(max(c // 4, 4), c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class InvertedResidual(nn.Module):
    def __init__(self, c, t=4):
        super().__init__()
        h = c * t
        self.body = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            SE(h), nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class UserNet(nn.Module):
    def __init__(self, num_classes, in_channels, width=16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.block = InvertedResidual(w)
        self.branch_a = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.block(self.stem(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], 1)
        return self.fc(self.head(x).mean((2, 3)))


def build_classifier(num_classes, in_channels, image_size):
    return UserNet(num_classes, in_channels, width=32)
