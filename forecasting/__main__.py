from forecasting.entry import main

main()
