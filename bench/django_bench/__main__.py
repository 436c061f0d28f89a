"""``python -m bench.django_bench --child PART ...`` runs one part (the parent starts it); without
``--child``, the whole benchmark (as ``python -m bench django``)."""

import sys

from .run import child_main, main

if "--child" in sys.argv[1:]:
    child_main(sys.argv[1:])
else:
    main()
