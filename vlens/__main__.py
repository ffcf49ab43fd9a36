from vlens.cli import main

raise SystemExit(main())
