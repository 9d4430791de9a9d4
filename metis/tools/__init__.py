"""Tools the agent may call: ``python`` (sandboxed interpreter), ``text_search``, ``image_search``.

Text and images in, an ``Observation`` out; nothing here knows of models or tokenizers.
Configs name a tool class by ``_target_`` (conf/tools/*.yaml). See docs/tools.md and docs/extending.md.
"""

from metis.tools.base import (ERROR_KINDS, IMAGE_PLACEHOLDER, Observation, Tool,
                              error_observation, escape_text, fit_image, smart_resize,
                              validate_arguments)
from metis.tools.image_search import (CachedResultsProvider, HTTPImageSearchProvider,
                                      ImageResult, ImageSearchTool, LocalImageIndex)
from metis.tools.python_tool import PythonTool
from metis.tools.sandbox import SandboxConfig, SandboxError
from metis.tools.search_common import ProviderError, QueryCache
from metis.tools.text_search import (BM25Provider, HTTPSearchProvider, SearchResult,
                                     TextSearchTool)
from metis.tools.toolbox import ToolBox, truncate_observation

__all__ = [
    "BM25Provider", "CachedResultsProvider", "ERROR_KINDS", "HTTPImageSearchProvider",
    "HTTPSearchProvider", "IMAGE_PLACEHOLDER", "ImageResult", "ImageSearchTool",
    "LocalImageIndex", "Observation", "ProviderError", "PythonTool", "QueryCache",
    "SandboxConfig", "SandboxError", "SearchResult", "TextSearchTool", "Tool",
    "ToolBox", "error_observation", "escape_text", "fit_image", "smart_resize",
    "truncate_observation", "validate_arguments",
]
