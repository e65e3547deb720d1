"""Reading params.yaml's YAML: what yaml.safe_load accepts, except a mapping that gives a key twice.

safe_load keeps the last of two equal keys without a word, so an edit higher up the file would be ignored
unseen; DVC (ruamel.yaml) refuses such a file, and so does every reader here. Anything else the text
cannot become (bad syntax, a tag safe_load refuses, an integer too long to convert, nesting too deep for
the parser) is a ParamsError naming the file, never a traceback.
"""

from __future__ import annotations

from typing import Any

import yaml

from pipelines.config.base import ParamsError, key_path

MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *anchor`: the anchored mapping's keys, which this one's may replace


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document in which one mapping gives a key twice, naming the key's
    path and the lines that give it (from the key nodes' start marks)."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source

    def construct_document(self, node: yaml.Node) -> Any:
        problems = [f"  {path}: on lines {_and(lines)}; keep one" for path, lines in self._repeated_keys(node)]
        if problems:
            raise ParamsError("\n".join([f"{self.source}: key(s) given twice (YAML would keep only the last value "
                                         f"without a word)", *problems]))
        return super().construct_document(node)

    def _repeated_keys(self, root: yaml.Node) -> list[tuple[str, list[int]]]:
        """(key path, the lines giving it) for each key some mapping of the document gives more than once."""
        repeated: list[tuple[str, list[int]]] = []
        pending: list[tuple[yaml.Node, tuple[Any, ...]]] = [(root, ())]
        seen: set[int] = set()
        while pending:  # a loop, not recursion: an alias may point back up the document
            node, path = pending.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                pending += [(item, (*path, index)) for index, item in enumerate(node.value)]
            elif isinstance(node, yaml.MappingNode):
                lines: dict[Any, list[int]] = {}
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.tag != MERGE_TAG:
                        key = self.construct_object(key_node)  # constructed once: the mapping reuses it
                        lines.setdefault(key, []).append(key_node.start_mark.line + 1)
                        pending.append((value_node, (*path, key)))
                    else:  # a merge (its keys belong to this mapping) or a complex key (construction refuses it)
                        pending.append((value_node, path))
                repeated += [(key_path((*path, key)), given) for key, given in lines.items() if len(given) > 1]
        return sorted(repeated, key=lambda item: item[1])


def load_yaml(text: str, source: str) -> Any:
    """The document in `text`, as yaml.safe_load reads it; ParamsError naming `source` if it cannot be read
    or one of its mappings gives a key twice."""
    loader = None
    try:
        loader = UniqueKeyLoader(text, source)  # (checks first that every character is one YAML allows)
        return loader.get_single_data()
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        problem = f"not valid YAML at line {line}: character {error.character:#x}: {error.reason}"
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f"{error.context}: " if error.context else ""
        problem = f"not valid YAML{where}: {context}{error.problem}"
    except RecursionError:
        problem = "not readable: lists or mappings nested too deeply"
    except ValueError as error:  # a value safe_load cannot build: an integer of thousands of digits, 2024-02-30
        if isinstance(error, ParamsError):
            raise
        problem = f"not valid YAML: {error}"
    finally:
        if loader is not None:
            loader.dispose()
    raise ParamsError(f"{source}: {problem}")


def _and(lines: list[int]) -> str:
    return ", ".join(map(str, lines[:-1])) + f" and {lines[-1]}"
