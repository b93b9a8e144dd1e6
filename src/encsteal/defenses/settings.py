"""What every defense's settings share: a typed model that refuses unknown keys, whose `name` (a Literal in each
subclass) picks the model when a config or a `NAME:key=value` spec is read."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DefenseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
