"""GET /v1/models: one card per served name, each rooted at the model path."""

from __future__ import annotations

from jaxllm.entrypoints.openai.protocol import ModelCard, ModelList, ModelPermission
from jaxllm.entrypoints.openai.serving_config import ServingConfig


class OpenAIServingModels:
    def __init__(self, config: ServingConfig):
        self.config = config

    def show_available_models(self) -> ModelList:
        return ModelList(
            data=[
                ModelCard(id=name, root=self.config.model_root, max_model_len=self.config.max_model_len,
                          permission=[ModelPermission()])
                for name in self.config.served_model_names
            ]
        )
