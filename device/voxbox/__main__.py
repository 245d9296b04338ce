from voxbox.cli import main

raise SystemExit(main())
