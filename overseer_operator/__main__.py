from overseer_operator.cli import main

raise SystemExit(main())
