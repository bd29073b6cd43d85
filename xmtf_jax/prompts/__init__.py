"""promptsource templates without promptsource: reading template files and trees, and rendering.

`templates` reads files and renders strictly for evaluation; `xp3_render` renders with the
semantics of the promptsource fork xP3 was built with; `template_tree` walks a whole templates tree.
"""
