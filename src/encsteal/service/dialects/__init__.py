"""The wire formats of real embedding services, on both sides of the wire.

The server speaks, beside its own shape, OpenAI's embeddings shape (POST /v1/embeddings with `input` or
`messages`, GET /v1/models) and Cohere's v2 embed (POST /v2/embed), with the same accounts, rate limits,
bounded decoding, quota, billing, replays and defenses (`routes`). The attacker's client speaks each
service's dialect (`WIRES`, used by `target.WireTarget`): the request it sends, how many images one request
may hold, the float or base64 replies it reads, the billed count it reads, the refusals that mean the quota
is spent.

    native            this API's own (encsteal.service.client.HttpTarget: .npy, billed in images and money)
    openai            POST <base>/embeddings, images as data URIs in `input`, billed in tokens (`usage`)
    openai-messages   the same with one image per request as a chat message (vLLM's multimodal embeddings)
    cohere            POST <base>/v2/embed, `images` as data URIs, billed in images (`meta.billed_units`)
    clarifai          POST <model URL>/outputs, base64 images, billed in operations (one per image)
"""

from encsteal.service.dialects.clarifai import ClarifaiWire
from encsteal.service.dialects.cohere import CohereWire
from encsteal.service.dialects.common import Wire
from encsteal.service.dialects.openai import OpenAIMessagesWire, OpenAIWire

WIRES: dict[str, type[Wire]] = {"openai": OpenAIWire, "openai-messages": OpenAIMessagesWire, "cohere": CohereWire,
                                "clarifai": ClarifaiWire}
"""The dialects of other services (`native` is HttpTarget's own)."""
